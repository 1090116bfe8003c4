// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * The benchmarks' baseline (tools/bench/tc.ts): a tc program that does no work, run on
 * the same packets as the classifier through BPF_PROG_TEST_RUN, so the harness's own cost
 * can be subtracted. Its own object, with no maps, so production hosts never load it: the
 * agent loads classifier.bpf.o and lifecycle.bpf.o only.
 *
 * Failure policy: none to state; it reads nothing and always passes.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("tc")
int sslwall_empty(struct __sk_buff *skb)
{
	return -1;	/* what the classifier returns to pass: tcx/cls_bpf "no opinion" */
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
