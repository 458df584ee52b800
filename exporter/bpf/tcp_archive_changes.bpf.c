// SPDX-License-Identifier: GPL-2.0
/* The archive's change detection (tcp_archive_changes.h, where its programs and what they compare are
 * described) for Linux 6.2+: the iterator reads each socket through a read-only cast. */
#include "tcp_archive_changes.h"
