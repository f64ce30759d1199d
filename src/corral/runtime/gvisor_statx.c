/*
 * Preloaded into every process of a gVisor sandbox (through the sandbox's /etc/ld.so.preload):
 * Debian 12's runsc (2022-12-19) answers EINVAL to statx(2) and newfstatat(2) calls that pass
 * AT_NO_AUTOMOUNT, which coreutils (ls, stat, cp, mv), util-linux and others always pass. The flag
 * only matters on automount points, and the sentry has none, so clearing it changes nothing else.
 *
 * Built with -nostdlib: no headers, no libc version requirement; `syscall` (in every glibc) is
 * bound at load time and sets errno. See docs/gvisor.md, "The stat fix-up".
 */

#define CORRAL_AT_NO_AUTOMOUNT 0x800

#if defined(__x86_64__)
#define CORRAL_NR_STATX 332
#define CORRAL_NR_NEWFSTATAT 262
#elif defined(__aarch64__)
#define CORRAL_NR_STATX 291
#define CORRAL_NR_NEWFSTATAT 79
#else
#error "the stat fix-up knows the system call numbers of x86_64 and aarch64 only"
#endif

#define EXPORT __attribute__((visibility("default")))

extern long syscall(long number, ...);
struct statx;
struct stat;

EXPORT int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf) {
    return (int)syscall(CORRAL_NR_STATX, dirfd, path, flags & ~CORRAL_AT_NO_AUTOMOUNT, mask, buf);
}

/* glibc's struct stat is the kernel's on x86_64 and aarch64; fstatat64 is the same function there. */
EXPORT int fstatat(int dirfd, const char *path, struct stat *buf, int flags) {
    return (int)syscall(CORRAL_NR_NEWFSTATAT, dirfd, path, buf, flags & ~CORRAL_AT_NO_AUTOMOUNT);
}

EXPORT __attribute__((alias("fstatat"))) int fstatat64(int dirfd, const char *path, struct stat *buf, int flags);
