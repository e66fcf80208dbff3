// Test harness for core/client_output, shared by its unit test and its fuzz target: RecvPacket
// frames in "transfer buffers" that are poisoned when released (a read after release shows as
// a corrupt packet), an event recorder that checks each buffer is released once, and a parser
// of everything written that checks it is whole frames in a legal order with intact packets.
// Header-only, no doctest: the fuzz target aborts through DERP_ASSERT instead.
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/assert.hh"
#include "core/client_output.hh"
#include "core/frame.hh"

namespace derp::test {

// Frames identified by a sequence number: its 8 bytes open the source key, and the payload is
// (id + i) mod 251 for byte i, so any byte out of place is seen.
class frame_store {
public:
    queued_frame make(std::uint64_t id, std::size_t packet_bytes) {
        auto buffer = std::make_unique<std::vector<std::uint8_t>>(recv_packet_frame_bytes(packet_bytes));
        std::array<std::uint8_t, key_bytes> src{};
        for (int b = 0; b < 8; ++b) src[static_cast<std::size_t>(b)] = static_cast<std::uint8_t>(id >> (8 * b));
        src[31] = 0x5a;
        std::vector<std::uint8_t> packet(packet_bytes);
        for (std::size_t i = 0; i < packet_bytes; ++i) packet[i] = static_cast<std::uint8_t>((id + i) % 251);
        encode_recv_packet(*buffer, node_key(key_span(src)), packet);
        queued_frame f;
        f.data = buffer->data();
        f.frame_bytes = static_cast<std::uint32_t>(buffer->size());
        f.buffer_index = static_cast<std::uint32_t>(id);
        f.enqueued_ns = id;
        _buffers[id] = std::move(buffer);
        return f;
    }
    // The output gives the buffer back: poison it; a second release is a bug.
    void release(std::uint32_t id) {
        auto it = _buffers.find(id);
        DERP_ASSERT(it != _buffers.end());
        DERP_ASSERT(_released.insert(id).second);
        std::memset(it->second->data(), 0xee, it->second->size());
    }
    std::size_t live() const noexcept { return _buffers.size() - _released.size(); }

private:
    std::map<std::uint64_t, std::unique_ptr<std::vector<std::uint8_t>>> _buffers;
    std::set<std::uint64_t> _released;
};

inline std::uint64_t id_of_key(const node_key& key) {
    std::uint64_t id = 0;
    for (int b = 0; b < 8; ++b) id |= std::uint64_t{key.span()[static_cast<std::size_t>(b)]} << (8 * b);
    return id;
}

struct recorder final : output_events {
    explicit recorder(frame_store& store) : frames(store) {}
    void release(const queued_frame& f) noexcept override { frames.release(f.buffer_index); }
    void sent(const node_key& src, std::size_t, std::uint64_t) noexcept override { sent_ids.push_back(id_of_key(src)); }
    void dropped(drop_reason reason, packet_kind, std::size_t, std::uint64_t) noexcept override {
        drops.push_back(reason);
    }
    frame_store& frames;
    std::vector<std::uint64_t> sent_ids;
    std::vector<drop_reason> drops;
};

// Everything written to one client, parsed as it grows: an optional HTTP head, then frames.
class stream_parser {
public:
    struct parsed_frame {
        std::uint8_t type = 0;
        std::vector<std::uint8_t> payload;
    };
    // Appends written bytes and parses every frame now complete. False at a malformed stream
    // (error() says why): a frame type or length the server never sends, a corrupt packet.
    bool feed(std::span<const std::uint8_t> bytes) {
        _buffer.insert(_buffer.end(), bytes.begin(), bytes.end());
        if (!_past_http) {
            // An HTTP head first (the 101), unless the stream starts with a frame (fast start).
            const std::string_view text(reinterpret_cast<const char*>(_buffer.data()), _buffer.size());
            const std::string_view http = "HTTP/";
            if (text.size() < http.size() && http.substr(0, text.size()) == text) return true;  // undecided
            if (text.substr(0, http.size()) == http) {
                const auto end = text.find("\r\n\r\n");
                if (end == std::string_view::npos) return true;
                _buffer.erase(_buffer.begin(), _buffer.begin() + static_cast<std::ptrdiff_t>(end + 4));
            }
            _past_http = true;
        }
        for (;;) {
            const frame_parse p = parse_frame(_buffer, key_bytes + packet_bytes_max);
            if (p.status == frame_parse_status::need_more) return true;
            if (p.status == frame_parse_status::too_large) return fail("frame too long");
            parsed_frame f;
            f.type = static_cast<std::uint8_t>(p.header.type);
            f.payload.assign(p.payload.begin(), p.payload.end());
            _buffer.erase(_buffer.begin(), _buffer.begin() + static_cast<std::ptrdiff_t>(p.frame_bytes));
            if (f.type == static_cast<std::uint8_t>(frame_type::recv_packet)) {
                if (f.payload.size() < key_bytes) return fail("short RecvPacket");
                const std::uint64_t id = id_of_key(node_key(key_span(f.payload.data(), key_bytes)));
                if (f.payload[31] != 0x5a) return fail("RecvPacket source key corrupt");
                for (std::size_t i = key_bytes; i < f.payload.size(); ++i)
                    if (f.payload[i] != static_cast<std::uint8_t>((id + i - key_bytes) % 251))
                        return fail("RecvPacket payload corrupt");
                packet_ids.push_back(id);
            }
            frames.push_back(std::move(f));
        }
    }
    bool whole() const noexcept { return _buffer.empty(); }  // nothing half-received
    const std::string& error() const noexcept { return _error; }
    std::vector<parsed_frame> frames;
    std::vector<std::uint64_t> packet_ids;  // RecvPacket ids in arrival order

private:
    bool fail(const char* why) {
        _error = why;
        return false;
    }
    std::vector<std::uint8_t> _buffer;
    bool _past_http = false;
    std::string _error;
};

// Frames as derpd writes them, for pushing into an output.
inline std::vector<std::uint8_t> server_key_frame() {
    std::vector<std::uint8_t> f(server_key_frame_bytes);
    std::array<std::uint8_t, key_bytes> key{};
    key[0] = 1;
    encode_server_key(f, node_key(key_span(key)));
    return f;
}
inline std::vector<std::uint8_t> server_info_frame() {
    std::vector<std::uint8_t> f(frame_header_bytes + nonce_bytes + 16 + 13);
    encode_frame_header(f, frame_type::server_info, static_cast<std::uint32_t>(f.size() - frame_header_bytes));
    return f;
}
inline std::vector<std::uint8_t> keep_alive_frame() {
    std::vector<std::uint8_t> f(keep_alive_frame_bytes);
    encode_keep_alive(f);
    return f;
}
inline std::vector<std::uint8_t> peer_gone_frame_of(std::uint8_t seed) {
    std::vector<std::uint8_t> f(peer_gone_frame_bytes);
    std::array<std::uint8_t, key_bytes> key{};
    key[0] = seed;
    encode_peer_gone(f, node_key(key_span(key)), peer_gone_reason::disconnected);
    return f;
}

}  // namespace derp::test
