// Reading and decoding the DERP map for derpprobe (see probe_map.hh).
#include "probe/probe_map.hh"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdio>
#include <cstring>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace derp::probe {
namespace {

using json = nlohmann::json;

// A map is a few KiB (Tailscale's default map is about 20 KiB); anything this large is not one.
constexpr std::size_t map_file_bytes_max = 16u << 20;

bool equal_fold(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        const auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
        if (lower(a[i]) != lower(b[i])) return false;
    }
    return true;
}

// Go's encoding/json: an exact key match first, else a case-insensitive one.
const json* field(const json& object, std::string_view name) {
    if (auto it = object.find(name); it != object.end()) return &*it;
    for (auto it = object.begin(); it != object.end(); ++it)
        if (equal_fold(it.key(), name)) return &*it;
    return nullptr;
}

const char* type_name(const json& value) {
    if (value.is_string()) return "a string";
    if (value.is_boolean()) return "a boolean";
    if (value.is_number()) return "a number";
    if (value.is_array()) return "an array";
    if (value.is_object()) return "an object";
    return "null";
}

// Each getter leaves the target alone for an absent or null field, as Go does.
result<void, std::string> get_string(const json& object, std::string_view name, std::string& out) {
    const json* v = field(object, name);
    if (v == nullptr || v->is_null()) return {};
    if (!v->is_string()) return unexpected(fmt::format("{}: want a string, got {}", name, type_name(*v)));
    out = v->get<std::string>();
    return {};
}

result<void, std::string> get_int(const json& object, std::string_view name, std::int64_t& out) {
    const json* v = field(object, name);
    if (v == nullptr || v->is_null()) return {};
    // Go refuses 1.5 (and 1e3) for an int field; so do we.
    if (!v->is_number_integer()) return unexpected(fmt::format("{}: want an integer, got {}", name, type_name(*v)));
    if (v->is_number_unsigned() && v->get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
        return unexpected(fmt::format("{}: out of range", name));
    out = v->get<std::int64_t>();
    return {};
}

result<void, std::string> get_bool(const json& object, std::string_view name, bool& out) {
    const json* v = field(object, name);
    if (v == nullptr || v->is_null()) return {};
    if (!v->is_boolean()) return unexpected(fmt::format("{}: want true or false, got {}", name, type_name(*v)));
    out = v->get<bool>();
    return {};
}

result<derp_node, std::string> parse_node(const json& value) {
    if (!value.is_object()) return unexpected(fmt::format("want an object, got {}", type_name(value)));
    derp_node n;
    for (auto r : {get_string(value, "Name", n.name), get_string(value, "HostName", n.host_name),
                   get_string(value, "CertName", n.cert_name), get_string(value, "IPv4", n.ipv4),
                   get_string(value, "IPv6", n.ipv6), get_int(value, "RegionID", n.region_id),
                   get_int(value, "STUNPort", n.stun_port), get_int(value, "DERPPort", n.derp_port),
                   get_bool(value, "STUNOnly", n.stun_only), get_bool(value, "InsecureForTests", n.insecure_for_tests)})
        if (!r) return unexpected(r.error());
    // Go would accept these and fail later at dial time; a probe named after nothing, or a
    // port no socket can have, is a map error the operator should see as such.
    if (n.name.empty()) return unexpected(std::string("Name is empty"));
    if (n.host_name.empty()) return unexpected(fmt::format("node \"{}\": HostName is empty", n.name));
    if (n.stun_port < -1 || n.stun_port > 65535)
        return unexpected(fmt::format("node \"{}\": STUNPort {} is not -1..65535", n.name, n.stun_port));
    if (n.derp_port < 0 || n.derp_port > 65535)
        return unexpected(fmt::format("node \"{}\": DERPPort {} is not 0..65535", n.name, n.derp_port));
    if (n.cert_name.starts_with("sha256-raw:")) {
        const std::string_view hex = std::string_view(n.cert_name).substr(11);
        const bool hex_ok = hex.size() == 64 && std::all_of(hex.begin(), hex.end(), [](char c) {
                                return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
                            });
        if (!hex_ok)
            return unexpected(fmt::format("node \"{}\": CertName \"{}\": want sha256-raw: and 64 hex digits", n.name,
                                          n.cert_name));
    }
    return n;
}

}  // namespace

result<derp_map, std::string> parse_derp_map(std::string_view json_text) {
    json doc;
    try {
        doc = json::parse(json_text);
    } catch (const json::parse_error& e) {
        // nlohmann's message carries the byte offset ("parse error at line 3, column 7: ...").
        std::string what = e.what();
        if (const auto at = what.find("] "); at != std::string::npos) what = what.substr(at + 2);
        return unexpected("not JSON: " + what);
    }
    if (!doc.is_object()) return unexpected(fmt::format("want a JSON object (a DERPMap), got {}", type_name(doc)));
    derp_map map;
    const json* regions = field(doc, "Regions");
    if (regions == nullptr || regions->is_null()) return map;
    if (!regions->is_object())
        return unexpected(fmt::format("Regions: want an object keyed by region ID, got {}", type_name(*regions)));
    for (auto it = regions->begin(); it != regions->end(); ++it) {
        // Go decodes Regions as map[int]*DERPRegion: a key that is not an integer fails the map.
        std::int64_t key = 0;
        const std::string& key_text = it.key();
        const auto [end, ec] = std::from_chars(key_text.data(), key_text.data() + key_text.size(), key);
        if (key_text.empty() || ec != std::errc() || end != key_text.data() + key_text.size())
            return unexpected(fmt::format("Regions: key \"{}\" is not a region ID", key_text));
        const json& value = it.value();
        if (value.is_null()) continue;  // a nil region: nothing to probe
        if (!value.is_object())
            return unexpected(fmt::format("region {}: want an object, got {}", key_text, type_name(value)));
        derp_region region;
        region.region_id = key;
        for (auto r : {get_int(value, "RegionID", region.region_id), get_string(value, "RegionCode", region.region_code),
                       get_string(value, "RegionName", region.region_name)})
            if (!r) return unexpected(fmt::format("region {}: {}", key_text, r.error()));
        if (const json* nodes = field(value, "Nodes"); nodes != nullptr && !nodes->is_null()) {
            if (!nodes->is_array())
                return unexpected(fmt::format("region {}: Nodes: want an array, got {}", key_text, type_name(*nodes)));
            for (std::size_t i = 0; i < nodes->size(); ++i) {
                auto node = parse_node((*nodes)[i]);
                if (!node) return unexpected(fmt::format("region {} node {}: {}", key_text, i, node.error()));
                region.nodes.push_back(std::move(node).value());
            }
        }
        map.regions.push_back(std::move(region));
    }
    std::sort(map.regions.begin(), map.regions.end(),
              [](const derp_region& a, const derp_region& b) { return a.region_id < b.region_id; });
    return map;
}

result<derp_map, std::string> load_derp_map(const std::string& source, const map_fetch_options& fetch) {
    if (source.starts_with("http://"))
        return unexpected(fmt::format(
            "-derp-map {}: plain http:// maps are not fetched (nothing verifies them); use https://, or save the "
            "map to a file and pass its path",
            source));
    if (source.starts_with("https://") || source == "local") {
        auto text = source == "local" ? fetch_localapi_text("/localapi/v0/derpmap", fetch) : fetch_https_text(source, fetch);
        if (!text) return unexpected(fmt::format("DERP map {}: {}", source == "local" ? "from the local tailscaled" : source, text.error()));
        auto map = parse_derp_map(*text);
        if (!map) return unexpected(fmt::format("DERP map {}: {}", source, map.error()));
        return map;
    }
    const std::string path = source.starts_with("file://") ? source.substr(7) : source;
    if (path.empty()) return unexpected(std::string("-derp-map: no file given"));
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (f == nullptr) return unexpected(fmt::format("DERP map {}: {}", path, std::strerror(errno)));
    std::string text;
    char chunk[65536];
    std::size_t n = 0;
    while ((n = std::fread(chunk, 1, sizeof chunk, f)) > 0) {
        text.append(chunk, n);
        if (text.size() > map_file_bytes_max) {
            std::fclose(f);
            return unexpected(fmt::format("DERP map {}: larger than {} bytes, not a DERP map", path, map_file_bytes_max));
        }
    }
    const bool read_error = std::ferror(f) != 0;
    std::fclose(f);
    if (read_error) return unexpected(fmt::format("DERP map {}: read error", path));
    auto map = parse_derp_map(text);
    if (!map) return unexpected(fmt::format("DERP map {}: {}", path, map.error()));
    return map;
}

result<std::vector<derp_region>, std::string> select_regions(const derp_map& map, const std::string& region_code) {
    std::vector<derp_region> selected;
    for (const derp_region& region : map.regions)
        if (region_code.empty() || region.region_code == region_code || std::to_string(region.region_id) == region_code)
            selected.push_back(region);
    if (selected.empty()) {
        if (region_code.empty()) return unexpected(std::string("the DERP map has no regions"));
        return unexpected(fmt::format("no region has RegionCode or RegionID \"{}\" (-region-code)", region_code));
    }
    // Probe names carry node names, and the mesh probe finds a node by name (as derpprobe's
    // getNodePair does): two nodes of one name would make both ambiguous.
    std::set<std::string> names;
    for (const derp_region& region : selected)
        for (const derp_node& node : region.nodes)
            if (!names.insert(node.name).second)
                return unexpected(fmt::format("the DERP map has two nodes named \"{}\"", node.name));
    return selected;
}

}  // namespace derp::probe
