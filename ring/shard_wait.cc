// The shard loop's sleep when it is batched (shard_config::wait_min_ns): one raw io_uring_enter
// with the kernel's min-wait, and the timeout arithmetic the loop's other waits share. The loop
// itself is in shard.cc.
#include "ring/shard.hh"

#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace derp::ring {

__kernel_timespec shard::timespec_until(std::uint64_t deadline_ns) const noexcept {
    const std::uint64_t delta = deadline_ns > _now_ns ? deadline_ns - _now_ns : 0;
    return {static_cast<long long>(delta / 1'000'000'000), static_cast<long long>(delta % 1'000'000'000)};
}

int shard::submit_and_wait_batched(std::optional<std::uint64_t> wake_ns) noexcept {
    // liburing 2.3 (Debian 12) predates min-wait (io_uring_submit_and_wait_min_timeout came in
    // 2.8), so the enter is made here: the SQ tail is published as liburing's own flush does
    // for a ring without SQPOLL, and one io_uring_enter submits and sleeps. The kernel then
    // wakes this thread when wait_batch_cqes completions are ready, or when min_wait_usec has
    // passed and at least one is (one timer instead of a wake-up per completion), or at the
    // timeout (the next timer of the wheel; no timeout: a second, and the loop sleeps again).
    io_uring_sq& sq = _ring.sq;
    const unsigned tail = sq.sqe_tail;
    if (sq.sqe_head != tail) {
        sq.sqe_head = tail;
        io_uring_smp_store_release(sq.ktail, tail);
    }
    const unsigned to_submit = tail - io_uring_smp_load_acquire(sq.khead);
    __kernel_timespec ts = wake_ns ? timespec_until(*wake_ns) : __kernel_timespec{1, 0};
    io_uring_getevents_arg arg{};
    arg.pad = static_cast<std::uint32_t>(std::max<std::int64_t>(_config.wait_min_ns / 1000, 1));  // min_wait_usec
    arg.ts = reinterpret_cast<std::uint64_t>(&ts);
    unsigned flags = IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG;
    int fd = _ring.ring_fd;
    if (_ring_fd_registered) {
        flags |= IORING_ENTER_REGISTERED_RING;
        fd = _ring.enter_ring_fd;
    }
    const long rc = ::syscall(__NR_io_uring_enter, fd, to_submit, std::max(_config.wait_batch_cqes, 1u), flags, &arg,
                              sizeof arg);
    return rc < 0 ? -errno : static_cast<int>(rc);
}

}  // namespace derp::ring
