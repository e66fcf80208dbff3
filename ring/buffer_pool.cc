// Buffer pool memory and its state checks.
#include "ring/buffer_pool.hh"

#include <sys/mman.h>

#include <cstdlib>

#include "core/assert.hh"

namespace derp::ring {

buffer_pool::buffer_pool(std::uint32_t buffer_count, std::uint32_t buffer_bytes)
    : _buffer_count(buffer_count), _buffer_bytes(buffer_bytes), _states(buffer_count, state::free) {
    DERP_ASSERT(buffer_count > 0 && buffer_bytes > 0);
    // Page-aligned anonymous memory: registration pins whole pages, and untouched buffers cost
    // no RSS until first used.
    void* memory = mmap(nullptr, region_bytes(), PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    DERP_ASSERT(memory != MAP_FAILED);
    _memory = static_cast<std::uint8_t*>(memory);
    _free.reserve(buffer_count);
    for (std::uint32_t i = buffer_count; i > 0; --i) _free.push_back(i - 1);
}

buffer_pool::~buffer_pool() { munmap(_memory, region_bytes()); }

void buffer_pool::transition(std::uint32_t index, state from, state to) noexcept {
    DERP_ASSERT(index < _buffer_count);
    DERP_ASSERT(_states[index] == from);
    _states[index] = to;
}

std::optional<std::uint32_t> buffer_pool::acquire() noexcept {
    if (_free.empty()) return std::nullopt;
    const std::uint32_t index = _free.back();
    _free.pop_back();
    transition(index, state::free, state::app);
    return index;
}

void buffer_pool::start_sending(std::uint32_t index) noexcept {
    transition(index, state::app, state::sending);
}
void buffer_pool::finish_sending(std::uint32_t index) noexcept {
    transition(index, state::sending, state::app);
}
void buffer_pool::lend(std::uint32_t index) noexcept { transition(index, state::app, state::lent); }

void buffer_pool::release(std::uint32_t index) noexcept {
    DERP_ASSERT(index < _buffer_count);
    DERP_ASSERT(_states[index] == state::app || _states[index] == state::lent);
    _states[index] = state::free;
    _free.push_back(index);
}

std::span<std::uint8_t> buffer_pool::data(std::uint32_t index) noexcept {
    DERP_ASSERT(index < _buffer_count);
    DERP_ASSERT(_states[index] != state::free);
    return {_memory + static_cast<std::size_t>(index) * _buffer_bytes, _buffer_bytes};
}

std::optional<std::uint32_t> buffer_pool::index_of(const void* address) const noexcept {
    const auto* p = static_cast<const std::uint8_t*>(address);
    if (p < _memory || p >= _memory + region_bytes()) return std::nullopt;
    return static_cast<std::uint32_t>(static_cast<std::size_t>(p - _memory) / _buffer_bytes);
}

std::uint32_t buffer_pool::in_state(state s) const noexcept {
    std::uint32_t n = 0;
    for (auto st : _states) n += st == s ? 1u : 0u;
    return n;
}

}  // namespace derp::ring
