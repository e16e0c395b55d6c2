"""Vietnamese text made ready for speech: NFC, numbers, dates, times and the abbreviations
of official letters written out in words, long text split at sentence boundaries.

Pure functions; speech engines read "UBND" or "25/12/2030" badly or not at all.
"""
from __future__ import annotations

import re
import unicodedata

DIGITS = ["không", "một", "hai", "ba", "bốn", "năm", "sáu", "bảy", "tám", "chín"]
SCALES = ["", "nghìn", "triệu", "tỷ"]

ABBREVIATIONS = {
    "UBND": "Ủy ban nhân dân", "HĐND": "Hội đồng nhân dân", "TT&TT": "Thông tin và Truyền thông",
    "TTTT": "Thông tin và Truyền thông", "MTTQ": "Mặt trận Tổ quốc", "ĐBQH": "đại biểu Quốc hội",
    "PCCC": "phòng cháy chữa cháy", "PCTT": "phòng chống thiên tai",
    "TKCN": "tìm kiếm cứu nạn", "BCH": "Ban chỉ huy", "CAND": "Công an nhân dân",
    "QĐND": "Quân đội nhân dân", "THCS": "trung học cơ sở", "THPT": "trung học phổ thông",
    "BHYT": "bảo hiểm y tế", "BHXH": "bảo hiểm xã hội", "CSGT": "cảnh sát giao thông",
    "HTX": "hợp tác xã", "KP": "khu phố", "TDP": "tổ dân phố", "TP.": "thành phố",
    "TP": "thành phố", "TX": "thị xã", "VN": "Việt Nam", "VH-TT": "Văn hóa - Thông tin",
    "VOV": "Đài Tiếng nói Việt Nam", "ATTP": "an toàn thực phẩm",
    "SĐT": "số điện thoại", "ĐT": "điện thoại",
}
UNITS = {"km": "ki-lô-mét", "m": "mét", "kg": "ki-lô-gam", "ha": "héc-ta", "mm": "mi-li-mét",
         "%": "phần trăm", "°C": "độ C", "đ": "đồng", "VNĐ": "đồng", "h": "giờ"}


def _three(n: int, full: bool) -> str:
    """0-999; ``full`` speaks a leading 'không trăm' (an inner group of a larger number)."""
    h, t, u = n // 100, n // 10 % 10, n % 10
    words: list[str] = []
    if h or full:
        words += [DIGITS[h], "trăm"]
    if t == 0:
        if u and words:
            words += ["lẻ", DIGITS[u]]
        elif u:
            words.append(DIGITS[u])
        return " ".join(words)
    if t == 1:
        words.append("mười")
    else:
        words += [DIGITS[t], "mươi"]
    if u == 1 and t > 1:
        words.append("mốt")
    elif u == 4 and t > 1:
        words.append("tư")
    elif u == 5:
        words.append("lăm")
    elif u:
        words.append(DIGITS[u])
    return " ".join(words)


def number_words(n: int) -> str:
    """Cardinal number in words: 2030 -> 'hai nghìn không trăm ba mươi'."""
    if n < 0:
        return "âm " + number_words(-n)
    if n == 0:
        return "không"
    if n >= 10**12:
        return " ".join(DIGITS[int(d)] for d in str(n))
    groups = []
    while n:
        groups.append(n % 1000)
        n //= 1000
    words = []
    for i in range(len(groups) - 1, -1, -1):
        g = groups[i]
        if g == 0:
            continue
        words.append(_three(g, full=i < len(groups) - 1))
        if SCALES[i]:
            words.append(SCALES[i])
    return " ".join(words)


def _month(m: int) -> str:
    return "tư" if m == 4 else number_words(m)


def _date(m: re.Match) -> str:
    d, mo, y = int(m.group(1)), int(m.group(2)), m.group(3)
    if not (1 <= d <= 31 and 1 <= mo <= 12):
        return m.group(0)
    word = "Ngày" if m.group(0)[:1] == "N" else "ngày"
    out = f"{word} {number_words(d)} tháng {_month(mo)}"
    return out + (f" năm {number_words(int(y))}" if y else "")


def _time(m: re.Match) -> str:
    h, mi = int(m.group(1)), int(m.group(2) or 0)
    if h > 24 or mi > 59:
        return m.group(0)
    return f"{number_words(h)} giờ" + (f" {number_words(mi)} phút" if mi else "")


def _decimal(m: re.Match) -> str:
    whole, frac = m.group(1).replace(".", ""), m.group(2)
    frac_words = number_words(int(frac)) if not frac.startswith("0") else \
        " ".join(DIGITS[int(c)] for c in frac)
    return f"{number_words(int(whole))} phẩy {frac_words}"


def _digits(text: str) -> str:
    return " ".join(DIGITS[int(c)] for c in text)


def _phone(m: re.Match) -> str:
    """A phone number, digit by digit with its leading zero, a pause between its groups,
    as announcers read it: 0912.345.678 -> không chín một hai, ba bốn năm, sáu bảy tám."""
    raw = m.group(0)
    intl = raw.startswith("+")
    groups = [g for g in re.split(r"[\s.()-]+", raw.lstrip("+")) if g]
    if intl:  # +84 then the number without its leading zero
        rest = groups[0][2:]
        groups = ([rest] if rest else []) + groups[1:]
    digits = "".join(groups)
    if len(groups) == 1:  # written without separators: 4-3-3, 3-4-4 or (after +84) 3-3-3
        cut = {10: (4, 7), 11: (3, 7), 9: (3, 6)}.get(len(digits), ())
        groups = [digits[a:b] for a, b in zip((0, *cut), (*cut, len(digits)))]
    words = ", ".join(_digits(g) for g in groups)
    return ("cộng tám bốn, " if intl else "") + words


def _house(m: re.Match) -> str:
    """A house number like 12/3 (or 12/3/5), read with "trên", never as a date."""
    parts = [number_words(int(x)) for x in m.group(2).split("/")]
    return f"{m.group(1)} " + " trên ".join(parts)


_PHONE = re.compile(r"(?<![\w.,])(?:\+84[\s.-]?\d{2,3}|\(?0\d{2,3}\)?)(?:[\s.-]?\d{3,4}){2}"
                    r"(?![\w.,]\d)|(?<![\w.,])0\d{9,10}(?!\d)")
_HOUSE = re.compile(r"(?i)\b(số nhà|số|nhà|hẻm|ngõ|ngách|kiệt)\s+(\d+(?:/\d+){1,2})\b")
_ABBR = re.compile(r"(?<![\w&.-])(" + "|".join(
    re.escape(a) for a in sorted(ABBREVIATIONS, key=len, reverse=True)) + r")(?![\w&-])")
_DATE = re.compile(r"(?:\b[Nn]gày\s+)?\b(\d{1,2})[/-](\d{1,2})(?:[/-](\d{4}))?\b")
_TIME = re.compile(r"\b(\d{1,2})\s*(?:giờ|h|:)(?:\s*(\d{2})(?:\s*phút)?)?(?![\d/])")
_DECIMAL = re.compile(r"\b(\d{1,3}(?:\.\d{3})*|\d+),(\d+)\b")
_THOUSANDS = re.compile(r"\b\d{1,3}(?:\.\d{3})+\b")
_UNIT = re.compile(r"(\d)\s*(km|kg|ha|mm|m|%|°C|VNĐ|đ)(?!\w)")
_NUMBER = re.compile(r"\d+")


def normalize(text: str) -> str:
    """Text as it should be read aloud."""
    t = unicodedata.normalize("NFC", text)
    # pictographs and other symbols are not read aloud (an engine may spell their names)
    t = "".join(c for c in t if unicodedata.category(c) not in ("So", "Cs", "Co"))
    t = _ABBR.sub(lambda m: ABBREVIATIONS[m.group(1)], t)
    t = _PHONE.sub(_phone, t)
    t = _HOUSE.sub(_house, t)
    t = _DATE.sub(_date, t)
    t = _TIME.sub(_time, t)
    t = _UNIT.sub(lambda m: f"{m.group(1)} {UNITS[m.group(2)]}", t)
    t = _DECIMAL.sub(_decimal, t)
    t = _THOUSANDS.sub(lambda m: m.group(0).replace(".", ""), t)
    t = _NUMBER.sub(lambda m: number_words(int(m.group(0))), t)
    return re.sub(r"[ \t]+", " ", t).strip()


def speakable(text: str) -> bool:
    """Whether anything in ``text`` can be read aloud (a letter, after normalisation)."""
    return any(unicodedata.category(c).startswith("L") for c in text)


def sentences(text: str, limit: int = 400) -> list[str]:
    """Split at sentence ends (then at commas) into pieces of at most ``limit`` characters."""
    parts = [p.strip() for p in re.split(r"(?<=[.!?;:…])\s+|\n+", text) if p.strip()]
    out: list[str] = []
    for p in parts:
        while len(p) > limit:
            cut = p.rfind(",", 0, limit)
            cut = cut if cut > limit // 3 else p.rfind(" ", 0, limit)
            cut = cut if cut > 0 else limit
            out.append(p[:cut + 1].strip())
            p = p[cut + 1:].strip()
        if p:
            out.append(p)
    return out
