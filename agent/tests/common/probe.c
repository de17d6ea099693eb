/* probe: tries syscalls a container must not be able to make and prints NAME=ok or
 * NAME=EPERM/ENOSYS/errno-N for each argument; `fds` prints the process's open fds;
 * `forkbomb` never returns. `x32_*` make the call with x32's syscall bit set, `i386_getpid`
 * through `int 0x80` (in a child: `unavailable` if the kernel has no ia32 entry), and
 * `unknown_hole`/`unknown_new` use numbers never assigned / above every assigned one.
 * Built static by the agent tests (gcc -static) and run inside test containers. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *name, long r) {
    if (r >= 0)
        printf("%s=ok\n", name);
    else if (errno == EPERM)
        printf("%s=EPERM\n", name);
    else if (errno == ENOSYS)
        printf("%s=ENOSYS\n", name);
    else
        printf("%s=errno-%d\n", name, errno);
}

#define X32_BIT 0x40000000L

/* getpid through the i386 entry, in a child that exits with the errno (0: it worked). */
static long i386_getpid(void) {
#if defined(__x86_64__)
    pid_t pid = fork();
    if (pid == 0) {
        long r;
        __asm__ volatile("int $0x80" : "=a"(r) : "a"(20L) : "memory");
        _exit(r < 0 ? (int)-r : 0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st))
        return -2;
    errno = WEXITSTATUS(st);
    return errno ? -1 : 0;
#else
    return -2;
#endif
}

static long sock(int family) {
    long r = socket(family, SOCK_STREAM, 0);
    if (r >= 0)
        close((int)r);
    return r;
}

static long reap(long pid) {
    if (pid == 0)
        _exit(0);
    if (pid > 0)
        waitpid((pid_t)pid, NULL, 0);
    return pid;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *n = argv[i];
        long r = -1;
        errno = 0;
        if (!strcmp(n, "keyctl"))
            r = syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3 /* session */, 1);
        else if (!strcmp(n, "add_key"))
            r = syscall(SYS_add_key, "user", "rctl-probe", "x", 1, -3);
        else if (!strcmp(n, "unshare_user"))
            r = syscall(SYS_unshare, CLONE_NEWUSER);
        else if (!strcmp(n, "clone_newuser"))
            r = reap(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0));
        else if (!strcmp(n, "clone3"))
            r = syscall(SYS_clone3, NULL, 0);
        else if (!strcmp(n, "fork"))
            r = reap(fork());
        else if (!strcmp(n, "init_module"))
            r = syscall(SYS_init_module, "", 0, "");
        else if (!strcmp(n, "bpf"))
            r = syscall(SYS_bpf, 0, NULL, 0);
        else if (!strcmp(n, "userfaultfd"))
            r = syscall(SYS_userfaultfd, 0);
        else if (!strcmp(n, "ptrace"))
            r = syscall(SYS_ptrace, PTRACE_TRACEME, 0, 0, 0);
        else if (!strcmp(n, "mount"))
            r = syscall(SYS_mount, "x", "/mnt", "tmpfs", 0, NULL);
        else if (!strcmp(n, "setns"))
            r = syscall(SYS_setns, 0, 0);
        else if (!strcmp(n, "x32_unshare_user"))
            r = syscall(X32_BIT | SYS_unshare, CLONE_NEWUSER);
        else if (!strcmp(n, "x32_getpid"))
            r = syscall(X32_BIT | SYS_getpid);
        else if (!strcmp(n, "i386_getpid")) {
            r = i386_getpid();
            if (r == -2) {
                printf("%s=unavailable\n", n);
                continue;
            }
        } else if (!strcmp(n, "unknown_hole"))
            r = syscall(380);
        else if (!strcmp(n, "unknown_new"))
            r = syscall(1000);
        else if (!strcmp(n, "personality_query"))
            r = personality(0xffffffff);
        else if (!strcmp(n, "personality_rx")) {
            r = syscall(SYS_personality, READ_IMPLIES_EXEC);
            if (r >= 0)
                personality(PER_LINUX);
        } else if (!strcmp(n, "socket_inet"))
            r = sock(AF_INET);
        else if (!strcmp(n, "socket_vsock"))
            r = sock(AF_VSOCK);
        else if (!strcmp(n, "socket_alg"))
            r = sock(AF_ALG);
        else if (!strcmp(n, "forkbomb")) {
            /* Every copy forks forever and retries when refused: it holds the limit. */
            for (;;)
                if (fork() < 0)
                    usleep(10000);
        } else if (!strcmp(n, "fds")) {
            DIR *d = opendir("/proc/self/fd");
            struct dirent *e;
            printf("fds=");
            while (d && (e = readdir(d)))
                if (e->d_name[0] != '.' && atoi(e->d_name) != dirfd(d))
                    printf("%s,", e->d_name);
            printf("\n");
            continue;
        } else {
            printf("%s=unknown\n", n);
            continue;
        }
        report(n, r);
    }
    return 0;
}
