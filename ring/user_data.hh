// The 64-bit io_uring user_data of every SQE the runtime submits: {op:8, slot:24, gen:32}.
// The generation lets a completion that arrives after its connection slot was freed and reused
// be recognised as late: only its buffer is released, nothing else is touched.
#pragma once

#include <cstdint>

#include "core/assert.hh"

namespace derp::ring {

enum class op : std::uint8_t {
    none = 0,
    accept = 1,         // multishot accept on a listener; slot = listener index
    recv = 2,           // multishot recv into the provided-buffer ring
    send = 3,           // WRITE_FIXED (or plain send) of a connection's output buffer
    cancel = 4,         // async cancel of a connection's ops
    msg_ring = 5,       // a wake-up sent to another thread's ring (CQE normally skipped)
    wake = 6,           // a wake-up received from another thread (posted by MSG_RING)
    signal_read = 7,    // read of the admin thread's signalfd
    shutdown = 8,       // shutdown(SHUT_WR) of a connection before close
    close = 9,          // close of a connection's descriptor
    connect = 10,       // an outgoing connection (clients, mesh dialers, load generators)
    recvmsg = 11,       // multishot recvmsg on a UDP socket; slot = socket index
};

inline constexpr std::uint32_t slot_bits = 24;
inline constexpr std::uint32_t slot_max = (1u << slot_bits) - 1;

struct user_data_fields {
    op kind;
    std::uint32_t slot;  // < 2^24
    std::uint32_t gen;
};

constexpr std::uint64_t pack_user_data(op kind, std::uint32_t slot, std::uint32_t gen) noexcept {
    DERP_ASSERT(slot <= slot_max);
    return (static_cast<std::uint64_t>(kind) << 56) | (static_cast<std::uint64_t>(slot) << 32) |
           gen;
}

constexpr user_data_fields unpack_user_data(std::uint64_t data) noexcept {
    return {static_cast<op>(data >> 56), static_cast<std::uint32_t>((data >> 32) & slot_max),
            static_cast<std::uint32_t>(data)};
}

}  // namespace derp::ring
