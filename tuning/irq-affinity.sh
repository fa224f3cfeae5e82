#!/usr/bin/env bash
# Pin each receive queue's IRQ of NIC $1 to one CPU, in order, and set RPS so
# packets are processed on the CPU whose cpm-edge worker reads them.
#   tuning/irq-affinity.sh eth0 0,1
set -euo pipefail
nic=${1:?usage: $0 NIC CPU_LIST}
IFS=, read -ra cpus <<<"${2:?usage: $0 NIC CPU_LIST}"
i=0
for irq in $(grep -E "${nic}(-|:).*(rx|TxRx)" /proc/interrupts | cut -d: -f1 | tr -d ' '); do
  cpu=${cpus[$((i % ${#cpus[@]}))]}
  echo "$cpu" > "/proc/irq/$irq/smp_affinity_list"
  echo "irq $irq -> cpu $cpu"
  i=$((i + 1))
done
q=0
for rps in /sys/class/net/"$nic"/queues/rx-*/rps_cpus; do
  cpu=${cpus[$((q % ${#cpus[@]}))]}
  printf '%x' $((1 << cpu)) > "$rps"
  q=$((q + 1))
done
