// Fixed-size buffers owned by one shard, in one contiguous region that can be registered with
// io_uring (IORING_REGISTER_BUFFERS), so sends use WRITE_FIXED and the kernel skips pinning pages
// on every send. Every buffer has exactly one state, checked on each transition in every build:
//     free -> app -> sending -> app -> free      (a connection's output buffer)
//     free -> app -> lent -> free                (handed to another shard; it comes home to
//                                                 the owner over a return ring and only the
//                                                 owner frees it)
// Not thread-safe: only the owning shard calls these.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

namespace derp::ring {

class buffer_pool {
public:
    enum class state : std::uint8_t { free, app, sending, lent };

    buffer_pool(std::uint32_t buffer_count, std::uint32_t buffer_bytes);
    ~buffer_pool();
    buffer_pool(const buffer_pool&) = delete;
    buffer_pool& operator=(const buffer_pool&) = delete;

    // free -> app. Nothing when every buffer is taken: that is backpressure for the caller.
    std::optional<std::uint32_t> acquire() noexcept;
    void start_sending(std::uint32_t index) noexcept;   // app -> sending
    void finish_sending(std::uint32_t index) noexcept;  // sending -> app
    void lend(std::uint32_t index) noexcept;            // app -> lent
    void release(std::uint32_t index) noexcept;         // app or lent -> free

    std::span<std::uint8_t> data(std::uint32_t index) noexcept;
    state state_of(std::uint32_t index) const noexcept { return _states[index]; }
    // The index of the buffer that holds the address, for buffers that come back by pointer.
    std::optional<std::uint32_t> index_of(const void* address) const noexcept;

    std::uint32_t buffer_bytes() const noexcept { return _buffer_bytes; }
    std::uint32_t buffer_count() const noexcept { return _buffer_count; }
    std::uint32_t in_use() const noexcept { return _buffer_count - static_cast<std::uint32_t>(_free.size()); }
    std::uint32_t in_state(state s) const noexcept;
    // The whole region, for io_uring_register_buffers (one iovec; buf_index 0).
    void* region() const noexcept { return _memory; }
    std::size_t region_bytes() const noexcept {
        return static_cast<std::size_t>(_buffer_count) * _buffer_bytes;
    }

private:
    void transition(std::uint32_t index, state from, state to) noexcept;

    std::uint32_t _buffer_count;
    std::uint32_t _buffer_bytes;
    std::uint8_t* _memory = nullptr;
    std::vector<state> _states;
    std::vector<std::uint32_t> _free;  // LIFO: the most recently used buffer is still in cache
};

}  // namespace derp::ring
