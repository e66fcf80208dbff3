// Provided-buffer ring set-up and recycling (see provided_ring.hh).
#include "ring/provided_ring.hh"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace derp::ring {

provided_ring::~provided_ring() {
    // The ring is unregistered with the io_uring it belongs to (io_uring_queue_exit); the
    // owner tears the io_uring down first.
    if (_memory != nullptr) munmap(_memory, _memory_bytes);
}

result<void, std::string> provided_ring::setup(io_uring& ring, std::uint32_t count, std::uint32_t buffer_bytes,
                                               std::uint16_t group) noexcept {
    DERP_ASSERT(_memory == nullptr);
    DERP_ASSERT(count > 0 && count <= 32768 && (count & (count - 1)) == 0);
    _count = count;
    _buffer_bytes = buffer_bytes;
    _group = group;
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    const std::size_t ring_bytes = (sizeof(io_uring_buf) * count + page - 1) / page * page;
    _memory_bytes = ring_bytes + static_cast<std::size_t>(count) * buffer_bytes;
    void* memory = mmap(nullptr, _memory_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) {
        _memory = nullptr;
        return unexpected(fmt::format("mmap of {} KiB of receive buffers: {}", _memory_bytes >> 10,
                                      std::strerror(errno)));
    }
    _memory = static_cast<std::uint8_t*>(memory);
    _ring = reinterpret_cast<io_uring_buf_ring*>(_memory);
    _buffers = _memory + ring_bytes;
    io_uring_buf_ring_init(_ring);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<std::uint64_t>(_ring);
    reg.ring_entries = count;
    reg.bgid = group;
    if (const int err = io_uring_register_buf_ring(&ring, &reg, 0); err != 0) {
        if (err == -EINVAL)
            return unexpected(fmt::format(
                "the kernel refused a provided-buffer ring ({}); derpd needs Linux 6.0 or newer "
                "(provided-buffer rings and multishot recv)",
                std::strerror(-err)));
        return unexpected(fmt::format("io_uring_register_buf_ring: {}", std::strerror(-err)));
    }
    for (std::uint32_t bid = 0; bid < count; ++bid) recycle(static_cast<std::uint16_t>(bid));
    flush();
    return {};
}

void provided_ring::recycle(std::uint16_t bid) noexcept {
    io_uring_buf_ring_add(_ring, buffer(bid), _buffer_bytes, bid, io_uring_buf_ring_mask(_count),
                          static_cast<int>(_pending));
    ++_pending;
}

void provided_ring::flush() noexcept {
    if (_pending == 0) return;
    io_uring_buf_ring_advance(_ring, static_cast<int>(_pending));
    _pending = 0;
}

}  // namespace derp::ring
