// SPDX-License-Identifier: GPL-2.0
/* The archive's change detection (tcp_archive_changes.h) for kernels before Linux 6.2, which have no
 * bpf_rdonly_cast: the iterator finds each tcp_sock with bpf_skc_to_tcp_sock(). exporter/archive/kernel.py
 * loads it when tcp_archive_changes.bpf.o does not load. */
#define TCP_ARCHIVE_CHANGES_COMPAT
#include "tcp_archive_changes.h"
