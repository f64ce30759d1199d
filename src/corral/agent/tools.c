/*
 * corral-tools: the small static programs of a sandbox's start and of its commands, one binary.
 * Built static by the server (corral.runtime.static_tools, with musl where installed: its start-up
 * is a few system calls, glibc's ~100 CPUID traps on a virtual machine) into the agent package's
 * __pycache__, named by this source's checksum (corral_agent.tools): it runs in any template, whatever its libc,
 * and each use is one exec where a shell or a dynamically linked tool took two or three
 * (docs/performance.md, "Static tools").
 *
 * corral-tools exec-as ERR_FD UID GID GROUPS [--tty] [--cwd DIR] -- PROGRAM ARG...
 *     For the agent (corral_agent.exec_as): run a command as another user. The agent starts it with
 *     vfork (Python's Popen does when no ids change), so the agent is never forked. Sets the
 *     supplementary groups (GROUPS: comma-separated, may be empty), then gid and uid (real,
 *     effective and saved); with --tty makes its stdin (a terminal; the agent made this process a
 *     session leader) its controlling terminal; with --cwd enters DIR as the user (a directory the
 *     user may not enter fails, as in the user's own shell and as E2B's envd does it); execs PROGRAM,
 *     searched in $PATH (this process has the command's environment) as Python's subprocess
 *     searches it. If anything fails, two native ints go to ERR_FD, the step (1: entering DIR, 0:
 *     anything else) and the errno, and it exits 127; ERR_FD is close-on-exec, so the agent reads
 *     end-of-file once the command runs.
 *
 * corral-tools pid1 [FD...]
 *     A sandbox's pid 1 when its agent comes from the zygote: writes one byte to stdout (the host
 *     learns that bubblewrap has finished the sandbox), puts /dev/null on stdin, stdout and stderr,
 *     closes the FDs bubblewrap left it, and waits for ever, holding nothing else.
 *
 * corral-tools launch NOFILE UID [--cgroup-fds FD,...] -- PROGRAM ARG...
 *     On the host, as root, the start of a sandbox's bubblewrap: waits for one line on stdin
 *     (end-of-file: the server went away, exit 1); with --cgroup-fds moves itself into the
 *     sandbox's cgroups by writing 0 to each FD (the cgroup.procs files the server opened: no wait
 *     for the server to move it), without it the server moved it before sending the line; sets the
 *     soft limit of open files to NOFILE, puts /dev/null on stdin, clears the supplementary groups,
 *     sets gid and uid to UID (no capabilities are left) and execs PROGRAM (an absolute path).
 *
 * corral-tools netns UID
 *     On the host, as root: makes the network namespaces of bubblewrap sandboxes (ahead, as spares, or
 *     just before a sandbox). Clears the supplementary groups, sets gid and uid to UID and makes a
 *     user namespace (owned by UID, no id mapped); then, for each byte read on stdin, a network
 *     namespace owned by that user namespace, with IPv6 off for the links added later (default:
 *     the server's veth; lo keeps ::1) and every port bindable by any user (ip_unprivileged_port_start),
 *     and writes one byte to stdout (the server opens /proc/PID/ns/net before it asks for the next);
 *     exits at end-of-file. UID's processes on the host
 *     (bubblewrap, the agent's joiner) may enter these namespaces; a sandbox's own user namespace, a
 *     sibling, has no capability over them.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <unistd.h>

extern char **environ;

/* -- exec-as ------------------------------------------------------------------------------------ */

static int err_fd = -1;

static void report_step(int step, int err) {
    int values[2] = {step, err ? err : EIO};
    if (err_fd >= 0 && write(err_fd, values, sizeof values) < 0) {
        /* the agent reads end-of-file, then the exit status 127 */
    }
    _exit(127);
}

static void report(int err) { report_step(0, err); }

static unsigned long number(const char *text, void (*fail)(int)) {
    char *end;
    errno = 0;
    unsigned long value = strtoul(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-' || value > 0xfffffffeUL) fail(EINVAL);
    return value;
}

static void set_groups(const char *list) {
    size_t count = *list ? 1 : 0;
    for (const char *p = list; *p; p++) count += *p == ',';
    gid_t *groups = count ? calloc(count, sizeof *groups) : NULL;
    char *copy = strdup(list);
    if ((count && groups == NULL) || copy == NULL) report(ENOMEM);
    size_t n = 0;
    for (char *item = strtok(copy, ","); item != NULL; item = strtok(NULL, ",")) {
        if (n == count) report(EINVAL);
        groups[n++] = (gid_t)number(item, report);
    }
    if (setgroups(n, groups) != 0) report(errno);
    free(copy);
    free(groups);
}

static int exec_as(int argc, char **argv) {
    if (argc < 6) _exit(127);
    err_fd = (int)number(argv[0], report);
    uid_t uid = (uid_t)number(argv[1], report);
    gid_t gid = (gid_t)number(argv[2], report);
    int at = 4;
    int tty = 0;
    const char *cwd = NULL;
    if (strcmp(argv[at], "--tty") == 0) {
        tty = 1;
        at++;
    }
    if (at + 1 < argc && strcmp(argv[at], "--cwd") == 0) {
        cwd = argv[at + 1];
        at += 2;
    }
    if (at + 1 >= argc || strcmp(argv[at], "--") != 0) report(EINVAL);
    char **command = argv + at + 1;

    set_groups(argv[3]);
    if (setresgid(gid, gid, gid) != 0) report(errno);
    if (setresuid(uid, uid, uid) != 0) report(errno);
    if (tty && ioctl(0, TIOCSCTTY, 0) != 0) report(errno);
    if (cwd != NULL && chdir(cwd) != 0) report_step(1, errno);
    if (fcntl(err_fd, F_SETFD, FD_CLOEXEC) != 0) report(errno);

    const char *program = command[0];
    if (strchr(program, '/') != NULL) {
        execve(program, command, environ);
        report(errno);
    }
    /* As Python's subprocess: each $PATH entry in turn (an empty one is the cwd, no $PATH is
     * "/bin:/usr/bin"); the first error other than "not there" wins. */
    const char *path = getenv("PATH");
    if (path == NULL) path = "/bin:/usr/bin";
    size_t length = strlen(program);
    char *candidate = malloc(strlen(path) + length + 2);
    if (candidate == NULL) report(ENOMEM);
    int first = 0;
    int last = ENOENT;
    for (const char *dir = path;;) {
        const char *colon = strchr(dir, ':');
        size_t size = colon ? (size_t)(colon - dir) : strlen(dir);
        if (size) {
            memcpy(candidate, dir, size);
            candidate[size] = '/';
            memcpy(candidate + size + 1, program, length + 1);
        } else {
            memcpy(candidate, program, length + 1);
        }
        execve(candidate, command, environ);
        last = errno;
        if (last != ENOENT && last != ENOTDIR && first == 0) first = last;
        if (colon == NULL) break;
        dir = colon + 1;
    }
    report(first ? first : last);
    return 127;
}

/* -- pid1 and launch: errors go to stderr (the sandbox's runtime log) ----------------------------- */

static const char *mode = "";

static void die(const char *what) {
    fprintf(stderr, "corral-tools %s: %s: %s\n", mode, what, strerror(errno));
    _exit(1);
}

static void bad_number(int err) {
    errno = err;
    die("bad arguments");
}

static void null_stdio(int count) {
    int null = open("/dev/null", O_RDWR);
    if (null < 0) die("open /dev/null");
    for (int fd = 0; fd < count; fd++)
        if (fd != null && dup2(null, fd) < 0) die("dup2");
    if (null >= count) close(null);
}

static int pid1(int argc, char **argv) {
    for (int i = 0; i < argc; i++) number(argv[i], bad_number); /* checked while errors reach the log */
    if (write(1, ".", 1) != 1) die("write");
    null_stdio(3);
    for (int i = 0; i < argc; i++) close((int)number(argv[i], bad_number)); /* last: what it holds is settled */
    for (;;) pause();
    return 0;
}

/* Each FD of a comma-separated list: a sandbox cgroup's cgroup.procs; "0" moves the caller. */
static void join_cgroups(char *list) {
    for (char *fd = strtok(list, ","); fd != NULL; fd = strtok(NULL, ",")) {
        int procs = (int)number(fd, bad_number);
        if (write(procs, "0", 1) != 1) die("joining the sandbox's cgroups");
        close(procs);
    }
}

static int launch(int argc, char **argv) {
    char *cgroup_fds = NULL;
    int dashes = 2; /* where "--" is */
    if (argc >= 4 && strcmp(argv[2], "--cgroup-fds") == 0) {
        cgroup_fds = argv[3];
        dashes = 4;
    }
    if (argc < dashes + 2 || strcmp(argv[dashes], "--") != 0 || argv[dashes + 1][0] != '/') {
        errno = EINVAL;
        die("usage: launch NOFILE UID [--cgroup-fds FD,...] -- /PROGRAM ARG...");
    }
    rlim_t files = (rlim_t)number(argv[0], bad_number);
    uid_t uid = (uid_t)number(argv[1], bad_number);
    for (;;) {
        char c;
        ssize_t n = read(0, &c, 1);
        if (n < 0 && errno == EINTR) continue;
        if (n != 1) _exit(1); /* the server went away before releasing it */
        if (c == '\n') break;
    }
    if (cgroup_fds != NULL) join_cgroups(cgroup_fds);
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) die("getrlimit");
    limit.rlim_cur = files;
    if (setrlimit(RLIMIT_NOFILE, &limit) != 0) die("setrlimit RLIMIT_NOFILE");
    null_stdio(1);
    if (setgroups(0, NULL) != 0) die("setgroups");
    if (setresgid(uid, uid, uid) != 0) die("setresgid");
    if (setresuid(uid, uid, uid) != 0) die("setresuid");
    execv(argv[dashes + 1], argv + dashes + 1);
    die(argv[dashes + 1]);
    return 1;
}

/* PATH relative to NET, an fd of /proc/sys/net (the calling process's network namespace's). */
static void set_sysctl(int net, const char *path, const char *value) {
    int fd = openat(net, path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) die(path);
    size_t len = strlen(value);
    if (write(fd, value, len) != (ssize_t)len) die(path);
    close(fd);
}

static int netns(int argc, char **argv) {
    if (argc != 1) {
        errno = EINVAL;
        die("usage: netns UID");
    }
    uid_t uid = (uid_t)number(argv[0], bad_number);
    if (setgroups(0, NULL) != 0) die("setgroups");
    if (setresgid(uid, uid, uid) != 0) die("setresgid");
    if (setresuid(uid, uid, uid) != 0) die("setresuid");
    if (unshare(CLONE_NEWUSER) != 0) die("unshare(CLONE_NEWUSER)");
    for (;;) {
        char c;
        ssize_t n = read(0, &c, 1);
        if (n < 0 && errno == EINTR) continue;
        if (n != 1) return 0; /* end-of-file: the server is done, or gone */
        if (unshare(CLONE_NEWNET) != 0) die("unshare(CLONE_NEWNET)");
        /* Before eth0 exists, so it takes IPv6 off from default: no write of all or eth0 (each retries
         * on the rtnl lock, spinning for milliseconds while other namespaces are torn down). */
        /* /proc/sys/net looked up once: every namespace's "net" dentry hangs under /proc/sys by that
         * one name, so each lookup compares it with every live namespace's (in a locked loop). */
        int net = open("/proc/sys/net", O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (net < 0) die("/proc/sys/net");
        set_sysctl(net, "ipv6/conf/default/disable_ipv6", "1");
        set_sysctl(net, "ipv4/ip_unprivileged_port_start", "0");
        close(net);
        if (write(1, ".", 1) != 1) die("write");
    }
}

int main(int argc, char **argv) {
    if (argc >= 2) {
        mode = argv[1];
        if (strcmp(mode, "exec-as") == 0) return exec_as(argc - 2, argv + 2);
        if (strcmp(mode, "pid1") == 0) return pid1(argc - 2, argv + 2);
        if (strcmp(mode, "launch") == 0) return launch(argc - 2, argv + 2);
        if (strcmp(mode, "netns") == 0) return netns(argc - 2, argv + 2);
    }
    fprintf(stderr, "usage: corral-tools exec-as|pid1|launch|netns ...\n");
    return 2;
}
