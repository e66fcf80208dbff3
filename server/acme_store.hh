// What -certmode letsencrypt keeps in -certdir, under the names of derper's cache (Go's
// autocert.DirCache), so that a derper's certificate directory works for derpd unchanged:
//   acme_account+key   the ACME account key, PEM "EC PRIVATE KEY" (P-256)
//   <hostname>         the certificate's key (PEM "EC PRIVATE KEY") followed by the chain
//                      (PEM, leaf first), one file so that key and chain change together
// Files are 0600 in a 0700 directory, written to a fresh temporary file (O_EXCL|O_NOFOLLOW)
// and renamed over the old one: a crash leaves the old file or the new one, never half.
#pragma once

#include <optional>
#include <string>

#include "core/result.hh"
#include "crypto/acme_crypto.hh"

namespace derp::server {

std::string acme_account_key_path(const std::string& certdir);
std::string acme_certificate_path(const std::string& certdir, const std::string& hostname);

// Reads a file derpd wrote (at most bytes_max): nothing when it does not exist.
result<std::optional<std::string>, std::string> read_acme_file(const std::string& path, std::size_t bytes_max);
// Replaces path with contents, mode 0600, through a temporary file and rename.
result<void, std::string> write_acme_file(const std::string& path, const std::string& contents);

struct account_key_load {
    tls::ec_key key;
    bool created = false;
};
// The account key, made and written on first use.
result<account_key_load, std::string> load_or_create_account_key(const std::string& certdir);

}  // namespace derp::server
