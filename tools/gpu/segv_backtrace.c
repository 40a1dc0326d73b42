/* LD_PRELOAD helper for the device, where there is no gdb: on SIGSEGV/SIGABRT/SIGBUS print the native
 * backtrace (library + offset; `addr2line -e LIB OFFSET` or `nm -D` names it) to stderr, then die with
 * the same signal. Build: cc -shared -fPIC -O1 -o segv_backtrace.so segv_backtrace.c -ldl
 * Used by tools/gpu/diag_numpy.py (issue 22: torch/numpy beside a CUDA build of ppow). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void on_fatal(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    void *frames[64];
    int n = backtrace(frames, 64);
    char line[512];
    int len = snprintf(line, sizeof line, "SEGV_BACKTRACE signal %d at address %p, %d frames\n", sig, si->si_addr, n);
    write(2, line, len);
    for (int i = 0; i < n; i++) {
        Dl_info info;
        if (dladdr(frames[i], &info) && info.dli_fname) {
            len = snprintf(line, sizeof line, "SEGV_FRAME %2d %s +0x%lx %s\n", i, info.dli_fname,
                           (unsigned long)((char *)frames[i] - (char *)info.dli_fbase),
                           info.dli_sname ? info.dli_sname : "?");
        } else {
            len = snprintf(line, sizeof line, "SEGV_FRAME %2d %p\n", i, frames[i]);
        }
        write(2, line, len);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

__attribute__((constructor)) static void install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fatal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    sigaction(SIGABRT, &sa, NULL);
}
