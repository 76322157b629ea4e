# bench/wrk.sh -- sourced by bench/http and bench/backends: one wrk run
# turned into the three bench lines. Needs $DURATION (seconds) and $out
# (a folder for wrk's raw output).
#
# run_wrk PEER BENCH THREADS LOAD URL [WRK ARGS...] [-- SCRIPT ARGS...]:
# the three figure lines.
run_wrk() {
	local peer=$1 bench=$2 threads=$3 load=$4 url=$5
	shift 5
	local t=${load#t} c=${load#*c} pre=() post=() a
	t=${t%c*}
	while (($#)); do
		a=$1
		shift
		if [[ $a == -- ]]; then
			post=(-- "$@")
			break
		fi
		pre+=("$a")
	done
	timeout $((DURATION + 30)) wrk -t"$t" -c"$c" -d"${DURATION}s" --latency "${pre[@]}" \
		"$url" "${post[@]}" >"$out/wrk.txt" 2>&1
	awk -v peer="$peer" -v bench="$bench" -v threads="$threads" '
		function us(x) {
			if (x ~ /us$/) return x + 0
			if (x ~ /ms$/) return x * 1000
			if (x ~ /s$/) return x * 1000000
			return -1
		}
		/^ +50%/ { p50 = us($2) }
		/^ +99%/ { p99 = us($2) }
		/ requests in / { secs = $4 + 0 }
		/^Requests\/sec:/ { rps = $2 }
		/Non-2xx|Socket errors/ { bad = bad $0 }
		END {
			if (bad != "" || rps == "" || p50 < 0 || p99 < 0) {
				print "http: wrk: bad run (" peer " " bench "): " bad > "/dev/stderr"
				exit 1
			}
			f = "peer=%s bench=%s threads=%s rate=%s unit=%s seconds=%.2f\n"
			printf f, peer, bench, threads, rps, "req/s", secs
			printf f, peer, bench "_p50", threads, p50, "us", secs
			printf f, peer, bench "_p99", threads, p99, "us", secs
		}' "$out/wrk.txt"
}

