/*
 * lua/pattern.h -- Lua 5.4 pattern matching with a step budget, for the
 * sandbox (pattern.c).
 *
 * Lua's own string.find/match/gmatch/gsub backtrack inside C, where the
 * instruction hook never runs: `("a*"):rep(30) .. "b"` against forty a's
 * takes longer than the universe. These replacements keep lstrlib's
 * semantics (classes, sets, anchors, quantifiers, captures, %b, %f,
 * back-references, the 200-deep recursion limit, 32 captures, the same
 * error messages) and count every matching step. A call may take at most
 * TR__LPAT_CALL_STEPS steps and at most what is left of the state's
 * instruction budget (tr__lsb.steps/max_steps, one step for one
 * instruction); its steps are charged to that budget, so many cheap calls
 * end at the instruction limit like any loop. Past either, the call raises
 * "pattern too complex (step budget exceeded)".
 */
#ifndef TR_LUA_PATTERN_H
#define TR_LUA_PATTERN_H

#include <lua.h>

/* Most steps one call (or one gmatch iteration) may take: some 40 ms,
 * enough for simple patterns over a few MiB; less than a receive call's
 * instruction budget, so a bomb caught by pcall leaves the call room to
 * report it. */
#define TR__LPAT_CALL_STEPS 4000000

/* The budget error's text (the message, without a position). */
#define TR__LPAT_TOO_COMPLEX "pattern too complex (step budget exceeded)"

/*
 * Sets find, match, gmatch and gsub of the table at `idx` to the bounded
 * versions. The state must be a sandbox's (tr__lua_sb() gives its
 * budget). Raises on memory errors: call inside a pcall.
 */
void tr__lpat_open(lua_State *L, int idx);

#endif
