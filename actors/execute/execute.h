/*
 * actors/execute/execute.h -- the execute kind: runs the tools that the
 * pipeline files declare (tool "name" { args, handler, timeout }, see
 * pipe/spec.h) on a step's message.
 *
 * Which tool: the message's `tool` field (a string), else `slots.tool`.
 * Its args: the message's `args` field (a table), else the other entries
 * of `slots` (intent fills slots; entries the tool does not declare are
 * left out there, while in `args` an undeclared arg is an error).
 * The answer adds `tool` (its name) and `result` (the handler's return
 * value; nil when it returns nothing) to the message.
 *
 * Arg checks, before the handler runs (errors name the tool and the arg):
 *   string  a string
 *   int     an integer, a whole float (12.0), or a string that is one
 *           whole decimal integer ("12", "-3": regex slots are strings)
 *   number  an integer or a float, or a string that parses fully as one
 *           ("1.5", "2e3"; not "0x10", "inf", " 1")
 *   bool    true/false, or the strings "true"/"false"
 *   table   a map or a list
 * nil counts as absent. The handler gets the converted values.
 *
 * SQL tools (sql = "...", execute.c has the details): the checked args
 * fill $1, $2, ... in `params` order (an absent optional arg is NULL),
 * the query runs on the node's PostgreSQL pool, and `result` is
 * {rows = [{column = value, ...}], count = n}. Values are only ever
 * parameters, never SQL. A value the server refuses (SQLSTATE class 22)
 * is TR_EINVAL like a bad arg; a broken query, the server down or any
 * other server error TR_EFAILED; the tool's timeout (else the run's time
 * left) or statement_timeout TR_ETIMEDOUT; a full pool TR_EREJECTED.
 *
 * Settings: tools = { "name", ... } (optional) limits the actor to those
 * tools; without it every declared tool may run.
 *
 * Timeouts (of handlers; a SQL tool's timeout bounds the wait for its
 * query's answer). A handler runs on the actor's worker thread until it
 * returns, so a bound on its CPU is what keeps one tool from stalling others: each
 * call gets an instruction budget of timeout x EXEC_STEPS_PER_US (100
 * per µs) Lua instructions; tools without a timeout get the Lua layer's
 * default per-call budget, 10 M. A call that spends it fails with a timeout error; one
 * that returns but took longer than its timeout by the clock fails the
 * same way and its result is dropped. Both answer TR_ETIMEDOUT, which a
 * step's retry_on counts as "timeout". The step's own timeout still bounds
 * how long the pipeline waits.
 */
#ifndef TR_ACTORS_EXECUTE_H
#define TR_ACTORS_EXECUTE_H

#include "actors/kinds.h"

TR_DECLARE_KIND(execute);

/* Lua instructions a tool may run per microsecond of its timeout: about
 * what Lua runs in a tight loop on the 2-core VM this was measured on
 * (~85-120 M/s; test_execute prints the figure). A faster machine cuts
 * a spinning tool before its timeout; slower code (calls, tables) runs
 * past it and the clock check then reports it. */
#define EXEC_STEPS_PER_US 100u

#endif
