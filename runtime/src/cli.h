/*
 * cli.h -- the `troupe` subcommands that live outside main.c: the
 * database tools (cli_db.c). Each takes the arguments after its name and
 * returns the process exit code.
 */
#ifndef TR_CLI_H
#define TR_CLI_H

/* troupe db migrate [--conninfo S] [FILE...] */
int tr__cmd_db(int argc, char **argv);
/* troupe ingest DIR [--tenant T] [--conninfo S] [--chunk N] [--overlap N] [FILE...] */
int tr__cmd_ingest(int argc, char **argv);

#endif
