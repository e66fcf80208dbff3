// kTLS socket options (Documentation/networking/tls.rst): TCP_ULP "tls", then SOL_TLS TLS_TX /
// TLS_RX with a tls12_crypto_info_* struct; records the kernel cannot hand over as data come
// with a TLS_GET_RECORD_TYPE control message.
#include "crypto/ktls.hh"

#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#ifndef TCP_ULP
#define TCP_ULP 31
#endif

namespace derp::tls {

std::string_view to_string(ktls_mode mode) noexcept {
    switch (mode) {
        case ktls_mode::automatic: return "auto";
        case ktls_mode::off: return "off";
        case ktls_mode::require: return "require";
    }
    return "auto";
}

bool parse_ktls_mode(std::string_view text, ktls_mode* out) noexcept {
    if (text == "auto") *out = ktls_mode::automatic;
    else if (text == "off") *out = ktls_mode::off;
    else if (text == "require") *out = ktls_mode::require;
    else return false;
    return true;
}

ktls_support probe_ktls() noexcept {
    ktls_support support;
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        support.detail = fmt::format("socket: {}", std::strerror(errno));
        return support;
    }
    const int rc = ::setsockopt(fd, SOL_TCP, TCP_ULP, "tls", 3);
    const int error = rc == 0 ? 0 : errno;
    ::close(fd);
    if (rc == 0 || error == ENOTCONN) {
        support.available = true;
        support.detail = "the kernel has the tls ULP";
    } else if (error == ENOENT) {
        support.detail = "the kernel has no tls module (CONFIG_TLS off, or `modprobe tls` needed)";
    } else {
        support.detail = fmt::format("setsockopt(TCP_ULP, tls): {}", std::strerror(error));
    }
    return support;
}

result<void, std::string> ktls_attach(int fd) noexcept {
    if (::setsockopt(fd, SOL_TCP, TCP_ULP, "tls", 3) != 0)
        return unexpected(fmt::format("setsockopt(TCP_ULP, tls): {}", std::strerror(errno)));
    return {};
}

result<void, std::string> ktls_install(int fd, bool transmit, const ktls_direction& direction) noexcept {
    if (::setsockopt(fd, SOL_TLS, transmit ? TLS_TX : TLS_RX, direction.crypto_info.data(),
                     direction.crypto_info_bytes) != 0)
        return unexpected(fmt::format("setsockopt(SOL_TLS, {}): {}", transmit ? "TLS_TX" : "TLS_RX",
                                      std::strerror(errno)));
    return {};
}

result<control_record, std::string> read_control_record(int fd) noexcept {
    control_record record;
    record.body.resize(16384 + 256);
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(std::uint8_t))] = {};
    iovec iov{record.body.data(), record.body.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT);
    if (n < 0) return unexpected(fmt::format("recvmsg: {}", std::strerror(errno)));
    record.body.resize(static_cast<std::size_t>(n));
    record.type = 23;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_TLS && c->cmsg_type == TLS_GET_RECORD_TYPE)
            record.type = *reinterpret_cast<const std::uint8_t*>(CMSG_DATA(c));
    return record;
}

result<void, std::string> ktls_send_close_notify(int fd) noexcept {
    std::uint8_t alert[2] = {1, 0};  // warning, close_notify
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(std::uint8_t))] = {};
    iovec iov{alert, sizeof alert};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_TLS;
    c->cmsg_type = TLS_SET_RECORD_TYPE;
    c->cmsg_len = CMSG_LEN(sizeof(std::uint8_t));
    *CMSG_DATA(c) = 21;
    if (::sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
        return unexpected(fmt::format("sendmsg(close_notify): {}", std::strerror(errno)));
    return {};
}

std::string describe(const control_record& record) {
    if (record.type == 21 && record.body.size() >= 2) {
        if (record.body[1] == 0) return "close_notify alert";
        return fmt::format("alert level {} description {}", record.body[0], record.body[1]);
    }
    if (record.type == 22 && !record.body.empty()) {
        // KeyUpdate needs the RX key changed, which kTLS on this kernel generation cannot do.
        if (record.body[0] == 24) return "KeyUpdate (cannot rekey kTLS RX)";
        return fmt::format("handshake message type {}", record.body[0]);
    }
    return fmt::format("record type {} of {} bytes", record.type, record.body.size());
}

}  // namespace derp::tls
