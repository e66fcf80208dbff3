// A provided-buffer ring (IORING_REGISTER_PBUF_RING): a group of equal buffers the kernel picks
// from for multishot recv and recvmsg, so idle connections hold no receive memory. Buffers go
// back with recycle() and become visible to the kernel in one batch with flush().
// liburing 2.3 has no io_uring_setup_buf_ring, so the ring memory is mapped here.
#pragma once

#include <liburing.h>

#include <cstdint>
#include <span>
#include <string>

#include "core/result.hh"

namespace derp::ring {

class provided_ring {
public:
    provided_ring() = default;
    ~provided_ring();
    provided_ring(const provided_ring&) = delete;
    provided_ring& operator=(const provided_ring&) = delete;

    // count must be a power of two, at most 32768. The error names the kernel requirement.
    result<void, std::string> setup(io_uring& ring, std::uint32_t count, std::uint32_t buffer_bytes,
                                    std::uint16_t group) noexcept;

    std::uint16_t group() const noexcept { return _group; }
    std::uint32_t buffer_bytes() const noexcept { return _buffer_bytes; }
    std::uint8_t* buffer(std::uint16_t bid) const noexcept {
        return _buffers + static_cast<std::size_t>(bid) * _buffer_bytes;
    }
    void recycle(std::uint16_t bid) noexcept;
    void flush() noexcept;  // publishes every recycle() since the last flush

private:
    io_uring_buf_ring* _ring = nullptr;
    std::uint8_t* _memory = nullptr;
    std::uint8_t* _buffers = nullptr;
    std::size_t _memory_bytes = 0;
    std::uint32_t _count = 0;
    std::uint32_t _buffer_bytes = 0;
    std::uint32_t _pending = 0;
    std::uint16_t _group = 0;
};

}  // namespace derp::ring
