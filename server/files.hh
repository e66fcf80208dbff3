// The files derpd reads at start-up: the server key file (derper's `-c` JSON, created on first
// start, never overwritten) and the mesh pre-shared key file; and the private directory it
// writes a self-signed key into. Errors say which file and why.
#pragma once

#include <string>

#include "core/key.hh"
#include "core/rate_limit.hh"
#include "core/result.hh"

namespace derp::server {

struct loaded_key {
    private_key key;
    bool created = false;  // the file did not exist and was written now
};

// Reads the key file, or creates it (mode 0600, written to a temporary file and renamed, so a
// crash never leaves half a key) when it does not exist. An unreadable or malformed file is an
// error and is left untouched.
result<loaded_key, std::string> load_or_create_key_file(const std::string& path);

// Reads a mesh PSK file: 64 hex digits, surrounding whitespace trimmed (spec 4).
result<key_mesh, std::string> load_mesh_key_file(const std::string& path);

// Reads a --rate-config file (spec 2.12; core/rate_limit.hh). Errors name the file.
result<rate_config, std::string> load_rate_config_file(const std::string& path);

// Makes `path` and any missing parent (mode 0700, as derper's os.MkdirAll(dir, 0700)), then
// checks the directory itself: owned by derpd's effective user or by root, and writable by
// neither group nor others. Whoever else could write there could plant a symlink where derpd
// is about to write a private key. Errors name the directory and say what to fix.
result<void, std::string> make_private_directory(const std::string& path);

// derper's default -mesh-psk-file: /home/derp/keys/derp-mesh.key, else $HOME/keys/derp-mesh.key,
// whichever exists; empty when neither does.
std::string default_mesh_psk_path();

}  // namespace derp::server
