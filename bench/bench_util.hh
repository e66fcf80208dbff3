// Small helpers shared by the benchmark programs: medians of rounds and thread pinning.
#pragma once

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

namespace derp::bench {

// The median of the rounds (the upper one of the middle two for an even count); 0 for none.
inline double median(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    return values.empty() ? 0 : values[values.size() / 2];
}

// Pins the calling thread to `cpu` (modulo the online cores).
inline void pin_this_thread(int cpu) {
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(static_cast<unsigned>(cpu % static_cast<int>(std::max(1L, online))), &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

}  // namespace derp::bench
