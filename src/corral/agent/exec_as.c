/*
 * corral-exec-as: run a command as another user, for the agent (corral_agent.exec_as).
 *
 *     exec-as ERR_FD UID GID GROUPS [--tty] -- PROGRAM ARG...
 *
 * The agent starts it with vfork (Python's Popen does when no ids change), so a command as another
 * user no longer forks the agent: a fork copies the agent's page tables and its memory becomes
 * copy-on-write until the child execs (docs/performance.md, "Commands as another user").
 * It sets the supplementary groups (GROUPS: comma-separated, may be empty), then gid and uid (real,
 * effective and saved), with --tty makes its stdin (a terminal; the agent made this process a
 * session leader) its controlling terminal, and execs PROGRAM, searched in $PATH (this process
 * runs with the command's environment) as Python's subprocess searches it. If anything fails, the
 * errno goes to ERR_FD as a native int and it exits 127; ERR_FD is close-on-exec, so the agent reads
 * end-of-file once the command runs. Built static by the server (corral.runtime.exec_helper): it
 * runs in any template, whatever its libc.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

extern char **environ;

static int err_fd = -1;

static void fail(int err) {
    int value = err ? err : EIO;
    if (err_fd >= 0 && write(err_fd, &value, sizeof value) < 0) {
        /* the agent reads end-of-file and then the exit status 127 */
    }
    _exit(127);
}

static unsigned long number(const char *text) {
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
    if (count && groups == NULL) fail(ENOMEM);
    size_t n = 0;
    char *copy = strdup(list);
    if (copy == NULL) fail(ENOMEM);
    for (char *item = strtok(copy, ","); item != NULL; item = strtok(NULL, ",")) {
        if (n == count) fail(EINVAL);
        groups[n++] = (gid_t)number(item);
    }
    if (setgroups(n, groups) != 0) fail(errno);
    free(copy);
    free(groups);
}

int main(int argc, char **argv) {
    if (argc < 7) _exit(127);
    err_fd = (int)number(argv[1]);
    uid_t uid = (uid_t)number(argv[2]);
    gid_t gid = (gid_t)number(argv[3]);
    int at = 5;
    int tty = 0;
    if (strcmp(argv[at], "--tty") == 0) {
        tty = 1;
        at++;
    }
    if (at >= argc || strcmp(argv[at], "--") != 0 || at + 1 >= argc) fail(EINVAL);
    char **command = argv + at + 1;

    set_groups(argv[4]);
    if (setresgid(gid, gid, gid) != 0) fail(errno);
    if (setresuid(uid, uid, uid) != 0) fail(errno);
    if (tty && ioctl(0, TIOCSCTTY, 0) != 0) fail(errno);
    if (fcntl(err_fd, F_SETFD, FD_CLOEXEC) != 0) fail(errno);

    const char *program = command[0];
    if (strchr(program, '/') != NULL) {
        execve(program, command, environ);
        fail(errno);
    }
    /* As Python's subprocess: each $PATH entry in turn (an empty one is the cwd, no $PATH is
     * "/bin:/usr/bin"); the first error other than "not there" wins. */
    const char *path = getenv("PATH");
    if (path == NULL) path = "/bin:/usr/bin";
    size_t length = strlen(program);
    char *candidate = malloc(strlen(path) + length + 2);
    if (candidate == NULL) fail(ENOMEM);
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
    fail(first ? first : last);
    return 127;
}
