/*
 * troupe/troupe.h -- the umbrella header: everything an actor or an
 * embedding program needs. Actors include nothing else from the runtime.
 */
#ifndef TROUPE_TROUPE_H
#define TROUPE_TROUPE_H

#define TROUPE_VERSION "0.1.0"

#include "err.h"
#include "msg.h"
#include "actor.h"
#include "node.h"
#include "sup.h"

#endif
