/*
 * main.c -- the `troupe` command.
 *
 *   troupe run [--threads N] [--log-level L] [FILE...]   start a node
 *   troupe version                                     print the version
 *   troupe help | --help                               usage
 *
 * `run` starts the scheduler and waits for SIGINT/SIGTERM, then shuts the
 * node down (every actor's terminate() runs) and exits 0. Loading pipeline
 * files, the HTTP door and the built-in actors arrive with later issues;
 * until then `run` refuses FILE arguments it cannot load rather than
 * pretending to.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <troupe/troupe.h>

static void usage(FILE *f)
{
	fputs("usage: troupe <command> [options]\n"
	      "\n"
	      "commands:\n"
	      "  run [--threads N] [--log-level L] [FILE...]  start a node (Ctrl-C to stop)\n"
	      "  version                                      print the version\n"
	      "  help                                         this text\n",
	      f);
}

static void log_json(const char *level, const char *msg, const char *extra)
{
	fprintf(stderr, "{\"ts_us\":%llu,\"level\":\"%s\",\"msg\":\"%s\"%s%s}\n",
	        (unsigned long long)tr_wall_us(), level, msg, extra ? "," : "", extra ? extra : "");
}

static int parse_uint(const char *s, unsigned *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno != 0 || *s == '\0' || *end != '\0' || v > 1024)
		return -1;
	*out = (unsigned)v;
	return 0;
}

static int cmd_run(int argc, char **argv)
{
	tr_node_opts o;
	memset(&o, 0, sizeof(o));
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			fputs("usage: troupe run [--threads N] [--log-level L] [FILE...]\n"
			      "  --threads N     worker threads (default: number of CPUs)\n"
			      "  --log-level L   debug|info|warn|error (default info)\n",
			      stdout);
			return 0;
		} else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
			if (parse_uint(argv[++i], &o.threads) != 0 || o.threads == 0) {
				fprintf(stderr, "troupe run: --threads wants a number from 1 to 64, got '%s'\n",
				        argv[i]);
				return 2;
			}
		} else if (strcmp(argv[i], "--log-level") == 0 && i + 1 < argc) {
			i++;
		} else if (argv[i][0] == '-') {
			fprintf(stderr, "troupe run: unknown option '%s' (see troupe run --help)\n", argv[i]);
			return 2;
		} else {
			fprintf(stderr,
			        "troupe run: cannot load '%s': pipeline files are not supported by "
			        "this build yet\n",
			        argv[i]);
			return 1;
		}
	}

	/* Block the stop signals before any thread starts, so every worker
	 * inherits the mask and only sigwait() below sees them. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	tr_node *node;
	int rc = tr_node_new(&o, &node);
	if (rc == TR_OK)
		rc = tr_node_start(node);
	if (rc != TR_OK) {
		fprintf(stderr, "troupe run: cannot start the node: %s\n", tr_strerror(rc));
		return 1;
	}
	char extra[64];
	snprintf(extra, sizeof(extra), "\"threads\":%u", tr_node_threads(node));
	log_json("info", "node started", extra);
	int sig = 0;
	sigwait(&set, &sig);
	log_json("info", "stopping", NULL);
	tr_node_shutdown(node, 0);
	int code = tr_node_wait(node);
	tr_node_free(node);
	log_json("info", "stopped", NULL);
	return code == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[1];
	if (strcmp(cmd, "run") == 0)
		return cmd_run(argc - 2, argv + 2);
	if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
		printf("troupe %s\n", TROUPE_VERSION);
		return 0;
	}
	if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "troupe: unknown command '%s'\n", cmd);
	usage(stderr);
	return 2;
}
