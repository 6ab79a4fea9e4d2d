/*
 * Sandbox holder for the local cluster: the first process of every pod. It keeps the
 * pod's namespaces alive, reaps zombies re-parented to it, and exits on SIGINT/SIGTERM.
 * Built statically so the pause image is this one file.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig)
{
	(void)sig;
	_exit(0);
}

static void on_child(int sig)
{
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	}
}

static void install(int sig, void (*handler)(int), int flags)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = handler;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	if (sigaction(sig, &sa, NULL) < 0) {
		perror("pause: sigaction");
		exit(1);
	}
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		puts("pause (taskcluster e2e)");
		return 0;
	}
	if (getpid() != 1)
		fprintf(stderr, "pause: warning: not running as PID 1\n");
	install(SIGINT, on_stop, 0);
	install(SIGTERM, on_stop, 0);
	install(SIGCHLD, on_child, SA_NOCLDSTOP);
	for (;;)
		pause();
}
