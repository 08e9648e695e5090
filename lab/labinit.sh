#!/bin/busybox sh
# Ember lab init: the first process of the lab VM (see package lab).
# It loads the modules listed in /etc/ember-lab/modules (and, in the
# background, those in modules.late), mounts the host's
# root (9p tag hostroot) read-only at /host with fresh proc, sys, dev, tmp and
# run inside, mounts the job's writable shares, chroots into /host to run the
# job script named by the ember_lab_job kernel parameter, and powers off.
/bin/busybox mkdir -p /bin /proc /sys /dev /host
/bin/busybox --install -s /bin
export PATH=/bin

say() { echo "ember-lab-init: $*"; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

# The heartbeat: ember-lab strips this string from the console and counts a
# lab that has not printed it for a minute as hung (both CPUs stuck in the
# emulated SVM print nothing, and its kernel cannot report it). It carries
# no newline, so that landing inside a line of the job's output it leaves
# the line whole once stripped.
(while :; do printf '@@ember-beat@@'; sleep 5; done) &

# ember_lab_kvm_amd=P=V[,P=V...] on the lab's command line (EMBER_LAB_APPEND)
# passes module parameters to kvm_amd, for experiments with the nested SVM.
kvm_amd_args=$(sed -n 's/.*ember_lab_kvm_amd=\([^ ]*\).*/\1/p' /proc/cmdline | tr , ' ')

load_modules() {
	while read -r m; do
		args=
		[ "$m" = kvm_amd ] && args=$kvm_amd_args
		# shellcheck disable=SC2086
		insmod "/lib/modules/$m.ko" $args || say "insmod $m failed"
	done <"$1"
}
load_modules /etc/ember-lab/modules
load_modules /etc/ember-lab/modules.late &
late=$!

ip link set lo up

if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose hostroot /host; then
	say "cannot mount the host root"
	poweroff -f
fi
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup 2>/dev/null
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts -o ptmxmode=0666 devpts /host/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
mount -t tmpfs -o mode=1777 tmpfs /host/tmp
mount -t tmpfs -o mode=755 tmpfs /host/run

job="$ember_lab_job"
if [ -z "$job" ] || [ ! -f "/host$job/job.sh" ]; then
	say "no job script (ember_lab_job=$job)"
	poweroff -f
fi
if [ -f "/host$job/mounts.sh" ]; then
	. "/host$job/mounts.sh"
fi
wait "$late"
chroot /host /usr/bin/env -i /bin/sh "$job/job.sh"
sync
poweroff -f
