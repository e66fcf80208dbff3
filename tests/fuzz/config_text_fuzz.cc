// Fuzz target for the small text parsers of operator input: Go durations, IP addresses and
// prefixes (TS_DEBUG_TRUSTED_CIDRS), bootstrap DNS name lists and TXT percentages, -mesh-with
// lists. Each must
// return a verdict for any bytes, and what it accepts must be self-consistent.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/assert.hh"
#include "core/bootstrap_dns.hh"
#include "core/flags.hh"
#include "core/http_endpoints.hh"
#include "core/mesh_with.hh"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    if (auto ns = derp::parse_go_duration_ns(text)) {
        // What parses must format and parse back to the same value (up to Go's rounding of
        // fractions, which format_go_duration never produces).
        const auto again = derp::parse_go_duration_ns(derp::format_go_duration(*ns));
        DERP_ASSERT(again.has_value() && *again == *ns);
    }
    if (auto prefix = derp::parse_ip_prefix(text)) {
        DERP_ASSERT(prefix->bits >= 0 && prefix->bits <= 128);
        DERP_ASSERT(derp::prefix_contains(*prefix, prefix->address));
    }
    (void)derp::parse_ip(text);
    const int percent = derp::parse_rollout_percent(text);
    DERP_ASSERT(percent >= 0 && percent <= 100);
    for (const auto& entry : derp::parse_unpublished_names(text)) DERP_ASSERT(!entry.name.empty());
    if (auto mesh = derp::parse_mesh_with(text)) {
        // Every entry names something to dial and verify; the hosts as written parse back to
        // the same hosts and names.
        std::string hosts;
        for (const auto& e : *mesh) {
            DERP_ASSERT(!e.host.empty() && !e.verify_name.empty() && !e.dial_host.empty() && e.port != 0);
            hosts += (hosts.empty() ? "" : ",") + e.host;
        }
        const auto again = derp::parse_mesh_with(hosts);
        DERP_ASSERT(again.has_value() && again->size() == mesh->size());
        for (std::size_t i = 0; i < mesh->size(); ++i)
            DERP_ASSERT((*again)[i].host == (*mesh)[i].host && (*again)[i].verify_name == (*mesh)[i].verify_name);
    }
    return 0;
}
