// Bounded single-producer single-consumer ring for messages between two threads (one per ordered
// pair of shards and the admin thread). Producer and consumer each keep a private cursor and a
// cached copy of the other side's, so the shared cache lines are touched once per batch, not
// once per message: push() fills slots privately and publish() makes the batch visible with one
// release store; pop() reads privately and release() hands the slots back with one store
// (Seastar's smp_message_queue does the same). A full ring makes push() return false: the caller
// counts it as backpressure; nothing blocks and nothing is dropped silently.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <type_traits>

#include "core/assert.hh"

namespace derp::ring {

inline constexpr std::size_t cache_line_bytes = 64;

template <typename T>
class spsc_ring {
    static_assert(std::is_trivially_copyable_v<T>, "messages are copied by value between threads");

public:
    explicit spsc_ring(std::size_t capacity)
        : _mask(capacity - 1), _slots(std::make_unique<T[]>(capacity)) {
        DERP_ASSERT(capacity >= 2 && (capacity & (capacity - 1)) == 0);
    }
    spsc_ring(const spsc_ring&) = delete;
    spsc_ring& operator=(const spsc_ring&) = delete;

    std::size_t capacity() const noexcept { return _mask + 1; }

    // Producer side. Returns false when the ring is full (counting unpublished pushes).
    bool push(const T& message) noexcept {
        if (_producer.tail - _producer.head_cache > _mask) {
            _producer.head_cache = _head.load(std::memory_order_acquire);
            if (_producer.tail - _producer.head_cache > _mask) return false;
        }
        _slots[_producer.tail & _mask] = message;
        ++_producer.tail;
        return true;
    }
    // Makes every push since the last publish visible to the consumer. Returns whether there
    // was anything to publish. seq_cst so that the store is ordered before the producer's
    // later load of the consumer's "may be sleeping" flag (see ring/mailbox.hh).
    bool publish() noexcept {
        if (_producer.tail == _producer.published) return false;
        _producer.published = _producer.tail;
        _tail.store(_producer.tail, std::memory_order_seq_cst);
        return true;
    }
    std::size_t unpublished() const noexcept {
        return static_cast<std::size_t>(_producer.tail - _producer.published);
    }

    // Consumer side. pop() returns nullptr when nothing published is left; the slot it returns
    // stays valid until release().
    const T* pop() noexcept {
        if (_consumer.head == _consumer.tail_cache) {
            _consumer.tail_cache = _tail.load(std::memory_order_acquire);
            if (_consumer.head == _consumer.tail_cache) return nullptr;
        }
        return &_slots[_consumer.head++ & _mask];
    }
    // Gives every popped slot back to the producer.
    void release() noexcept { _head.store(_consumer.head, std::memory_order_release); }

    // Either side, approximate: what the consumer has yet to take.
    std::size_t occupancy() const noexcept {
        return static_cast<std::size_t>(_tail.load(std::memory_order_relaxed) -
                                        _head.load(std::memory_order_relaxed));
    }
    bool empty_for_consumer() const noexcept {
        return _consumer.head == _tail.load(std::memory_order_seq_cst);
    }

private:
    const std::uint64_t _mask;
    std::unique_ptr<T[]> _slots;
    // Shared cursors, each on its own cache line.
    alignas(cache_line_bytes) std::atomic<std::uint64_t> _head{0};  // written by the consumer
    alignas(cache_line_bytes) std::atomic<std::uint64_t> _tail{0};  // written by the producer
    // Private state of each side, also kept apart.
    alignas(cache_line_bytes) struct {
        std::uint64_t tail = 0;
        std::uint64_t published = 0;
        std::uint64_t head_cache = 0;
    } _producer;
    alignas(cache_line_bytes) struct {
        std::uint64_t head = 0;
        std::uint64_t tail_cache = 0;
    } _consumer;
};

}  // namespace derp::ring
