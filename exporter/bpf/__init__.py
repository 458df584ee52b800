"""eBPF programs (``*.bpf.c``), their build (``build``) and the ctypes libbpf loader (``libbpf``).

Nothing here imports prometheus_client; collectors read the maps and build metric families.
"""
