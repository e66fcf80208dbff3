// The wolfSSL handshake engine of -Dtls_library=wolfssl, as crypto/tls.cc drives it for server
// sessions: a context from PEM text that OpenSSL has already checked (chain, key, hostname),
// a handshake over the session's io_window, and, when it completes, what it negotiated and
// the keys at the record boundary behind the client's Finished (session::secrets). No
// wolfSSL type appears here: its compatibility headers clash with OpenSSL's, so only
// crypto/tls_wolfssl.cc includes them. Internal to crypto/.
#pragma once

#include <string>
#include <string_view>

#include "core/result.hh"
#include "crypto/tls_internal.hh"

namespace derp::tls {

// Owns a WOLFSSL_CTX: TLS 1.2 and 1.3, derpd's suites, no tickets, no session cache, SNI
// checked against `settings` (which must outlive it), ALPN http/1.1 when offered.
result<wolf_server*, std::string> wolf_server_make(const std::string& chain_pem, const secret_bytes& key_pem,
                                                   const context::state* settings);
void wolf_server_free(wolf_server* server) noexcept;
// The same from an OpenSSL context that context::make_server has checked: its chain (leaf,
// intermediates, meta certificate) and key as PEM, so that what wolfSSL serves is what OpenSSL
// accepted (crypto/tls_wolfssl_session.cc).
result<void, std::string> wolf_server_from(ssl_ctx_st* ctx, wolf_server*& out, const context::state* settings);

// A handshake reading and writing `s.window`; null (and `error` set) when wolfSSL refuses.
wolf_handshake* wolf_handshake_new(wolf_server* server, session::secrets& s, std::string& error) noexcept;
void wolf_handshake_free(wolf_handshake* handshake) noexcept;

enum class wolf_step : std::uint8_t { more, done, failed };
// Runs the handshake on what s.window holds. It never reads past the record it is in, so on
// `done` s.window.in_position is the boundary behind the client's Finished. On `done`, s's
// wolf_version, wolf_cipher, wolf_sni, wolf_alpn and wolf_keys are filled (wolf_keys empty
// when the suite is not one the record layer seals), and the caller frees the handshake.
wolf_step wolf_accept(wolf_handshake* handshake, session::secrets& s, std::string& error) noexcept;

// "wolfSSL 5.5.4": the library as loaded, for the log.
std::string wolf_library_version();

}  // namespace derp::tls
