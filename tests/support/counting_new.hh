// Allocation counting for the hot-path allocation tests (Tailscale's AllocsPerRun): linking
// counting_new.cc into a test executable replaces the global operator new with one that counts.
#pragma once

namespace derp::test {

// Global operator new calls so far in this process.
long allocation_count() noexcept;

}  // namespace derp::test
