// syscall_loop: nanoseconds per syscall, the least of five timed loops (bench_netstack.py builds it
// with the system's C compiler and pins it to one CPU). Usage: syscall_loop getppid|write|yield [calls]
// yield: a child process on the same CPU yields too, so every sched_yield() is a context switch.
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv)
{
	int write_calls = argc > 1 && strcmp(argv[1], "write") == 0;
	int yield_calls = argc > 1 && strcmp(argv[1], "yield") == 0;
	pid_t partner = 0;
	long calls = argc > 2 ? atol(argv[2]) : 1000000;
	int devnull = open("/dev/null", O_WRONLY);
	double best = 1e18;

	if (devnull < 0 || calls <= 0)
		return 2;
	if (yield_calls) {
		partner = fork();
		if (partner < 0)
			return 2;
		if (partner == 0)
			for (;;)
				sched_yield();
	}
	for (int round = 0; round < 5; round++) {
		double start = now_ns();

		for (long i = 0; i < calls; i++) {
			if (write_calls)
				syscall(SYS_write, devnull, "x", 1);
			else if (yield_calls)
				sched_yield();
			else
				syscall(SYS_getppid);
		}
		double per_call = (now_ns() - start) / calls;
		if (per_call < best)
			best = per_call;
	}
	if (partner > 0) {
		kill(partner, SIGKILL);
		waitpid(partner, NULL, 0);
	}
	printf("%.1f\n", best);
	return 0;
}
