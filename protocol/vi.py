"""Vietnamese names for the codes the protocol carries (alarm codes of `alarm` events), shown
by the hub and by the station's own status alike."""

ALARMS_VI = {"clock": "đồng hồ sai", "disk_full": "đầy bộ nhớ",
             "audio_device": "lỗi thiết bị âm thanh", "no_sound": "loa không ra tiếng",
             "amplifier": "lỗi tăng âm", "relay": "lỗi rơ-le",
             "health.relays": "rơ-le sai trạng thái", "health.amplifier": "tăng âm bất thường",
             "health.mains": "mất điện lưới", "health.ups": "ắc quy UPS yếu",
             "health.disk": "sắp đầy bộ nhớ", "health.memory": "thiếu bộ nhớ",
             "health.cpu_temp": "CPU quá nóng", "health.link": "mất kết nối",
             "health.clock": "đồng hồ sai", "health.audio_device": "lỗi thiết bị âm thanh",
             "health.modem": "sóng 4G yếu", "emergency_message": "chưa có tin khẩn cấp",
             "offline": "trạm mất kết nối", "audio_corrupt": "tệp âm thanh hỏng",
             "link": "mất kết nối", "cert_expiry": "chứng chỉ sắp hết hạn"}

OUTCOMES_VI = {"played": "đã phát", "failed": "lỗi phát", "missed": "bỏ lỡ",
               "preempted": "bị ngắt (ưu tiên cao hơn)", "interrupted": "bị gián đoạn",
               "started": "đang phát", "fallback": "phát dự phòng (tiếp âm lỗi)",
               "stopped": "đã dừng", "passed": "tự kiểm tra đạt"}

# why a message was refused (protocol.envelope.Reason, and "error": the receiver failed)
REFUSALS_VI = {"oversize": "quá lớn", "malformed": "sai định dạng",
               "unsupported_version": "phiên bản không hỗ trợ", "unknown_key": "khóa lạ",
               "bad_signature": "chữ ký sai", "expired": "hết hạn",
               "replayed": "tin cũ gửi lại", "wrong_kind": "sai loại tin",
               "wrong_sender": "sai người gửi", "wrong_station": "sai trạm",
               "bad_audio": "âm thanh hỏng", "error": "lỗi khi xử lý"}
