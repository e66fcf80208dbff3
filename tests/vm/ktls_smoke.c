/* kTLS smoke test for the VM harness: TLS 1.3 records through kernel TLS_TX/TLS_RX; io_uring. */
/* Proves the booted kernel runs our binaries, has io_uring and encrypts/decrypts TLS 1.3 records
 * itself (TLS_TX on one end of a TCP loopback pair, TLS_RX on the other) with made-up keys, for
 * each cipher derpd may hand it. Exit 0 when everything works, 1 otherwise. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/io_uring.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <unistd.h>

#ifndef TCP_ULP
#define TCP_ULP 31
#endif
#ifndef SOL_TLS
#define SOL_TLS 282
#endif

static int failures;

#define CHECK(cond, ...)                                                                         \
  do {                                                                                           \
    if (!(cond)) {                                                                               \
      printf("FAIL: " __VA_ARGS__);                                                              \
      printf("\n");                                                                              \
      failures++;                                                                                \
      return -1;                                                                                 \
    }                                                                                            \
  } while (0)

/* A connected TCP pair on 127.0.0.1 (kTLS is a TCP ULP: socketpair(AF_UNIX) would not do). */
static int tcp_pair(int *client, int *server) {
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof addr;
  int lst = socket(AF_INET, SOCK_STREAM, 0);
  CHECK(lst >= 0, "socket: %s", strerror(errno));
  CHECK(bind(lst, (struct sockaddr *)&addr, sizeof addr) == 0, "bind: %s", strerror(errno));
  CHECK(listen(lst, 1) == 0, "listen: %s", strerror(errno));
  CHECK(getsockname(lst, (struct sockaddr *)&addr, &len) == 0, "getsockname: %s", strerror(errno));
  *client = socket(AF_INET, SOCK_STREAM, 0);
  CHECK(*client >= 0, "socket: %s", strerror(errno));
  CHECK(connect(*client, (struct sockaddr *)&addr, sizeof addr) == 0, "connect: %s",
        strerror(errno));
  *server = accept(lst, NULL, NULL);
  CHECK(*server >= 0, "accept: %s", strerror(errno));
  close(lst);
  return 0;
}

static int read_full(int fd, unsigned char *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = recv(fd, buf + got, n - got, 0);
    CHECK(r > 0, "recv: %s", r == 0 ? "EOF" : strerror(errno));
    got += (size_t)r;
  }
  return 0;
}

union crypto_info {
  struct tls_crypto_info base;
  struct tls12_crypto_info_aes_gcm_128 aes128;
  struct tls12_crypto_info_aes_gcm_256 aes256;
  struct tls12_crypto_info_chacha20_poly1305 chacha;
};

/* Made-up key material; both directions use the same, as the two ends of one TLS direction do. */
static void fill(unsigned char *p, size_t n, unsigned char seed) {
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(seed + 7 * i);
}

static size_t make_info(unsigned short cipher, union crypto_info *ci) {
  memset(ci, 0, sizeof *ci);
  ci->base.version = TLS_1_3_VERSION;
  ci->base.cipher_type = cipher;
  switch (cipher) {
  case TLS_CIPHER_AES_GCM_128:
    fill(ci->aes128.key, sizeof ci->aes128.key, 1);
    fill(ci->aes128.iv, sizeof ci->aes128.iv, 2);
    fill(ci->aes128.salt, sizeof ci->aes128.salt, 3);
    return sizeof ci->aes128;
  case TLS_CIPHER_AES_GCM_256:
    fill(ci->aes256.key, sizeof ci->aes256.key, 4);
    fill(ci->aes256.iv, sizeof ci->aes256.iv, 5);
    fill(ci->aes256.salt, sizeof ci->aes256.salt, 6);
    return sizeof ci->aes256;
  default:
    fill(ci->chacha.key, sizeof ci->chacha.key, 7);
    fill(ci->chacha.iv, sizeof ci->chacha.iv, 8);
    return sizeof ci->chacha;
  }
}

/* Record sequence numbers are big-endian in crypto_info; every variant keeps rec_seq 8 bytes. */
static void set_seq(union crypto_info *ci, unsigned short cipher, unsigned char seq) {
  unsigned char *rs = cipher == TLS_CIPHER_AES_GCM_128   ? ci->aes128.rec_seq
                      : cipher == TLS_CIPHER_AES_GCM_256 ? ci->aes256.rec_seq
                                                         : ci->chacha.rec_seq;
  rs[7] = seq;
}

/* One connection: the client installs TLS_TX; record 0 is read raw by the server to see that it
 * left the socket encrypted, then the server installs TLS_RX at sequence 1 and must get record 1
 * back as plaintext. */
static int run_cipher(const char *name, unsigned short cipher) {
  static const char msg0[] = "derpd kTLS smoke: record zero";
  static const char msg1[] = "derpd kTLS smoke: record one, decrypted by the kernel";
  union crypto_info ci;
  size_t ci_len = make_info(cipher, &ci);
  unsigned char raw[256], plain[256];
  int c = -1, s = -1;
  if (tcp_pair(&c, &s) != 0) return -1;

  if (setsockopt(c, SOL_TCP, TCP_ULP, "tls", sizeof "tls") != 0) {
    CHECK(0, "%s: setsockopt(TCP_ULP, \"tls\"): %s%s", name, strerror(errno),
          errno == ENOENT ? " (this kernel has no kTLS: tls module missing or not loaded)" : "");
  }
  CHECK(setsockopt(s, SOL_TCP, TCP_ULP, "tls", sizeof "tls") == 0, "%s: server TCP_ULP: %s", name,
        strerror(errno));
  CHECK(setsockopt(c, SOL_TLS, TLS_TX, &ci, (socklen_t)ci_len) == 0, "%s: TLS_TX: %s", name,
        strerror(errno));

  CHECK(send(c, msg0, sizeof msg0, 0) == (ssize_t)sizeof msg0, "%s: send 0: %s", name,
        strerror(errno));
  /* TLS 1.3 record: 5-byte header (opaque type 23, legacy version 3.3), then the ciphertext of
   * plaintext + 1 inner content-type byte, then a 16-byte tag. */
  size_t rec_len = 5 + sizeof msg0 + 1 + 16;
  if (read_full(s, raw, rec_len) != 0) return -1;
  CHECK(raw[0] == 23 && raw[1] == 3 && raw[2] == 3, "%s: record header %02x %02x %02x", name,
        raw[0], raw[1], raw[2]);
  CHECK(((size_t)raw[3] << 8 | raw[4]) == rec_len - 5, "%s: record length %u, want %zu", name,
        (unsigned)(raw[3] << 8 | raw[4]), rec_len - 5);
  CHECK(memmem(raw, rec_len, "derpd", 5) == NULL, "%s: plaintext visible on the wire", name);
  printf("  %s: TLS_TX sent a %zu-byte encrypted record (plaintext not on the wire)\n", name,
         rec_len);

  set_seq(&ci, cipher, 1);
  CHECK(setsockopt(s, SOL_TLS, TLS_RX, &ci, (socklen_t)ci_len) == 0, "%s: TLS_RX: %s", name,
        strerror(errno));
  CHECK(send(c, msg1, sizeof msg1, 0) == (ssize_t)sizeof msg1, "%s: send 1: %s", name,
        strerror(errno));
  if (read_full(s, plain, sizeof msg1) != 0) return -1;
  CHECK(memcmp(plain, msg1, sizeof msg1) == 0, "%s: TLS_RX returned other bytes than were sent",
        name);
  printf("  %s: TLS_RX decrypted record 1: \"%s\"\n", name, (const char *)plain);
  close(c);
  close(s);
  return 0;
}

int main(void) {
  struct utsname u;
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (uname(&u) == 0) printf("kernel: %s %s %s\n", u.sysname, u.release, u.version);

  /* io_uring: derpd's runtime needs it; 6.1 has no io_uring_disabled knob, later kernels may. */
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  int ring = (int)syscall(__NR_io_uring_setup, 4, &p);
  if (ring < 0) {
    printf("FAIL: io_uring_setup: %s\n", strerror(errno));
    failures++;
  } else {
    printf("io_uring: io_uring_setup works (features 0x%x)\n", p.features);
    close(ring);
  }

  printf("kTLS (TLS 1.3, made-up keys, TCP loopback):\n");
  run_cipher("AES-128-GCM", TLS_CIPHER_AES_GCM_128);
  run_cipher("AES-256-GCM", TLS_CIPHER_AES_GCM_256);
  run_cipher("CHACHA20-POLY1305", TLS_CIPHER_CHACHA20_POLY1305);

  if (failures != 0) {
    printf("ktls_smoke: %d check(s) FAILED\n", failures);
    return 1;
  }
  printf("ktls_smoke: OK\n");
  return 0;
}
