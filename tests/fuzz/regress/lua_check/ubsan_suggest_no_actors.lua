-- fuzz_lua_check found: a step naming an unknown actor in a file that
-- declares no actor or supervisor: suggest_actor computed NULL + 0 (UBSan).
pipeline "p" { step "a" { } }
