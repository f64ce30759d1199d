/*
 * Preloaded into every process of a gVisor sandbox (through the sandbox's /etc/ld.so.preload):
 * Debian 12's runsc (2022-12-19) answers EINVAL to statx(2) and newfstatat(2) calls that pass
 * AT_NO_AUTOMOUNT, which coreutils (ls, stat, cp, mv), util-linux and others always pass. The flag
 * only matters on automount points, and the sentry has none, so clearing it changes nothing else.
 *
 * Built with -nostdlib: no headers, no libc version requirement; glibc's `syscall` sets errno. It
 * is weak so that a program without libc still loads (it never calls these). docs/gvisor.md.
 */

#define CORRAL_AT_NO_AUTOMOUNT 0x800

#if defined(__x86_64__)
#define CORRAL_NR_STATX 332L
#define CORRAL_NR_NEWFSTATAT 262L
#elif defined(__aarch64__)
#define CORRAL_NR_STATX 291L
#define CORRAL_NR_NEWFSTATAT 79L
#else
#error "the stat fix-up knows the system call numbers of x86_64 and aarch64 only"
#endif

#define EXPORT __attribute__((visibility("default")))

extern long syscall(long number, ...) __attribute__((weak));
struct statx;
struct stat;

EXPORT int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf) {
    return (int)syscall(CORRAL_NR_STATX, (long)dirfd, path, (long)(flags & ~CORRAL_AT_NO_AUTOMOUNT),
                        (unsigned long)mask, buf);
}

/* glibc's struct stat is the kernel's on x86_64 and aarch64; fstatat64 is the same function there
 * (glibc >= 2.33 exports both; older glibc inlines them over __fxstatat, which this leaves alone). */
EXPORT int fstatat(int dirfd, const char *path, struct stat *buf, int flags) {
    return (int)syscall(CORRAL_NR_NEWFSTATAT, (long)dirfd, path, buf, (long)(flags & ~CORRAL_AT_NO_AUTOMOUNT));
}

EXPORT __attribute__((alias("fstatat"))) int fstatat64(int dirfd, const char *path, struct stat *buf, int flags);
