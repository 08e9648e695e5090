package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/agent/proto"
	"github.com/embervm/ember/sandbox/client"
	"github.com/embervm/ember/sandbox/network/egress"
	"github.com/embervm/ember/sandbox/wire"
)

// emberd's address for the sandbox and template commands.
const (
	// defaultEmberdSocket is emberd's default --socket.
	defaultEmberdSocket = "/run/emberd.sock"
	// envEmberdSocket overrides it; envEmberdTCP and envEmberdToken select
	// emberd's TCP address instead.
	envEmberdSocket = "EMBERD_SOCKET"
	envEmberdTCP    = "EMBERD_TCP"
	envEmberdToken  = "EMBERD_TOKEN"
)

// kvFlag is a repeatable NAME=VALUE flag.
type kvFlag map[string]string

func (f kvFlag) String() string { return "" }
func (f kvFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q: want NAME=VALUE", s)
	}
	f[k] = v
	return nil
}

// emberdFlags registers --socket and returns a function making the client.
func emberdFlags(fs *flag.FlagSet) func() *client.Client {
	def := os.Getenv(envEmberdSocket)
	if def == "" {
		def = defaultEmberdSocket
	}
	sock := fs.String("socket", def, "emberd's API socket (or $"+envEmberdTCP+" and $"+envEmberdToken+" for its TCP address)")
	return func() *client.Client {
		if addr := os.Getenv(envEmberdTCP); addr != "" {
			return client.NewTCP(addr, os.Getenv(envEmberdToken))
		}
		return client.New(*sock)
	}
}

// parseSub parses a subcommand's flags; ok false means return code.
func parseSub(fs *flag.FlagSet, args []string, usage string) (int, bool) {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Printf("usage: %s\n", usage)
			fs.SetOutput(os.Stdout)
			fs.PrintDefaults()
			return exitOK, false
		}
		fmt.Fprintf(os.Stderr, "%s: %v\n", fs.Name(), err)
		return exitUsage, false
	}
	return 0, true
}

func fail(cmd string, err error) int {
	fmt.Fprintf(os.Stderr, "%s: %v\n", cmd, err)
	return exitFailure
}

// runSandboxCmd is `ember sandbox ...`.
func runSandboxCmd(args []string) int {
	const usage = "ember sandbox create|ls|kill|pause|resume|logs|exec|attach|cp|port-forward|policy|host|stats ..."
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage:", usage)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "create":
		return sandboxCreate(ctx, args[1:])
	case "ls", "list":
		return sandboxList(ctx, args[1:])
	case "kill", "rm":
		return sandboxEach(ctx, "ember sandbox kill", args[1:], func(c *client.Client, id string) error {
			sb, err := c.Kill(ctx, id)
			if err == nil && sb.Exit != nil {
				fmt.Printf("%s %s\n", id, sb.Exit.Reason)
			}
			return err
		})
	case "pause":
		return sandboxEach(ctx, "ember sandbox pause", args[1:], func(c *client.Client, id string) error {
			_, err := c.Pause(ctx, id)
			return err
		})
	case "resume":
		return sandboxEach(ctx, "ember sandbox resume", args[1:], func(c *client.Client, id string) error {
			_, err := c.Resume(ctx, id)
			return err
		})
	case "logs":
		return sandboxLogs(ctx, args[1:])
	case "exec":
		return sandboxExec(ctx, args[1:])
	case "attach":
		return sandboxAttach(ctx, args[1:])
	case "cp":
		return sandboxCopy(ctx, args[1:])
	case "port-forward":
		return sandboxPortForward(ctx, args[1:])
	case "policy":
		return sandboxPolicy(ctx, args[1:])
	case "host":
		return sandboxHost(ctx, args[1:])
	case "stats":
		return sandboxStats(ctx, args[1:])
	}
	fmt.Fprintf(os.Stderr, "ember sandbox: unknown command %q; usage: %s\n", args[0], usage)
	return exitUsage
}

func sandboxCreate(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("ember sandbox create", flag.ContinueOnError)
	mk := emberdFlags(fs)
	timeout := fs.Duration("timeout", 0, "end the sandbox after this long running (0: never)")
	env, meta := kvFlag{}, kvFlag{}
	fs.Var(env, "env", "NAME=VALUE added to every exec's environment (repeatable)")
	fs.Var(meta, "meta", "NAME=VALUE metadata (repeatable)")
	asJSON := fs.Bool("json", false, "print the sandbox as JSON")
	egress := fs.String("egress", "", "egress policy of a networked template's sandbox: allow-all (default), deny-all, or allowed CIDR[:PORT[-LAST]][/tcp|/udp],...")
	if code, ok := parseSub(fs, args, "ember sandbox create [flags] TEMPLATE"); !ok {
		return code
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "ember sandbox create: want one argument, the template")
		return exitUsage
	}
	if *timeout < 0 || (*timeout > 0 && *timeout < time.Second) {
		fmt.Fprintf(os.Stderr, "ember sandbox create: --timeout %v: want 0 or at least 1s\n", *timeout)
		return exitUsage
	}
	spec := wire.SandboxSpec{Template: fs.Arg(0), TimeoutS: int(timeout.Seconds()), Env: env, Metadata: meta}
	if *egress != "" {
		p, err := parsePolicy(*egress)
		if err != nil {
			fmt.Fprintf(os.Stderr, "ember sandbox create: --egress: %v\n", err)
			return exitUsage
		}
		spec.Network = &wire.NetworkSpec{Policy: &p}
	}
	c := mk()
	defer c.Close()
	sb, err := c.Create(ctx, spec)
	if err != nil {
		return fail("ember sandbox create", err)
	}
	if *asJSON {
		return printJSON(sb)
	}
	fmt.Println(sb.ID)
	fmt.Fprintf(os.Stderr, "restore %.1f ms, ready %.1f ms, total %.1f ms\n", sb.Timings.RestoreMS, sb.Timings.AgentReadyMS, sb.Timings.TotalMS)
	if n := sb.Network; n != nil {
		fmt.Fprintf(os.Stderr, "address %s, gateway %s, egress %s\n", n.Address, n.Gateway, n.Policy.Mode)
	}
	return exitOK
}

// parsePolicy parses --egress: allow-all, deny-all, or a comma-separated
// allowlist of egress.ParseRule's rules.
func parsePolicy(s string) (egress.Policy, error) {
	var p egress.Policy
	switch s {
	case string(egress.AllowAll), string(egress.DenyAll):
		p.Mode = egress.Mode(s)
	default:
		p.Mode = egress.Allowlist
		for _, r := range strings.Split(s, ",") {
			rule, err := egress.ParseRule(strings.TrimSpace(r))
			if err != nil {
				return p, err
			}
			p.Allow = append(p.Allow, rule)
		}
	}
	return p, p.Validate()
}

// sandboxPolicy is `ember sandbox policy ID POLICY`.
func sandboxPolicy(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("ember sandbox policy", flag.ContinueOnError)
	mk := emberdFlags(fs)
	const usage = "ember sandbox policy ID allow-all|deny-all|CIDR[:PORT[-LAST]][/tcp|/udp],..."
	if code, ok := parseSub(fs, args, usage); !ok {
		return code
	}
	if fs.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage:", usage)
		return exitUsage
	}
	p, err := parsePolicy(fs.Arg(1))
	if err != nil {
		fmt.Fprintf(os.Stderr, "ember sandbox policy: %v\n", err)
		return exitUsage
	}
	c := mk()
	defer c.Close()
	if _, err := c.SetPolicy(ctx, fs.Arg(0), p); err != nil {
		return fail("ember sandbox policy", err)
	}
	return exitOK
}

func printJSON(v any) int {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fail("ember", err)
	}
	return exitOK
}

func sandboxList(ctx context.Context, args []string) int {
	return listCmd(args, "ember sandbox ls", "sandboxes", func(c *client.Client) ([]wire.Sandbox, error) { return c.Sandboxes(ctx) },
		"ID\tTEMPLATE\tSTATE\tPID\tCREATED\tEXIT", func(sb wire.Sandbox) string {
			exit := ""
			if sb.Exit != nil {
				exit = sb.Exit.Reason
				if sb.Exit.Message != "" {
					exit += ": " + sb.Exit.Message
				}
			}
			return fmt.Sprintf("%s\t%s\t%s\t%d\t%s\t%s", sb.ID, sb.Template, sb.State, sb.PID, sb.CreatedAt.Local().Format(time.DateTime), exit)
		})
}

// listCmd is `ember NOUN ls [--json]`: the items fetch returns, as a
// table (header, then one row per item) or as JSON.
func listCmd[T any](args []string, name, what string, fetch func(*client.Client) ([]T, error), header string, row func(T) string) int {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	mk := emberdFlags(fs)
	asJSON := fs.Bool("json", false, "print the "+what+" as JSON")
	if code, ok := parseSub(fs, args, name+" [--json]"); !ok {
		return code
	}
	c := mk()
	defer c.Close()
	items, err := fetch(c)
	if err != nil {
		return fail(name, err)
	}
	if *asJSON {
		return printJSON(items)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, it := range items {
		fmt.Fprintln(tw, row(it))
	}
	tw.Flush()
	return exitOK
}

// sandboxEach runs fn for each ID argument.
func sandboxEach(ctx context.Context, name string, args []string, fn func(*client.Client, string) error) int {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	mk := emberdFlags(fs)
	if code, ok := parseSub(fs, args, name+" ID..."); !ok {
		return code
	}
	if fs.NArg() == 0 {
		fmt.Fprintf(os.Stderr, "%s: want one or more sandbox IDs\n", name)
		return exitUsage
	}
	c := mk()
	defer c.Close()
	code := exitOK
	for _, id := range fs.Args() {
		if err := fn(c, id); err != nil {
			code = fail(name, err)
		}
	}
	return code
}

func sandboxLogs(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("ember sandbox logs", flag.ContinueOnError)
	mk := emberdFlags(fs)
	vmmLog := fs.Bool("vmm", false, "ember's log instead of the guest console")
	crash := fs.Bool("crash", false, "the crash record of a sandbox that ended abnormally: reason, status, the console's tail and ember's last log lines")
	asJSON := fs.Bool("json", false, "with --crash: print the record as JSON")
	if code, ok := parseSub(fs, args, "ember sandbox logs [--vmm | --crash [--json]] ID"); !ok {
		return code
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "ember sandbox logs: want one argument, the sandbox ID")
		return exitUsage
	}
	if *crash && *vmmLog {
		fmt.Fprintln(os.Stderr, "ember sandbox logs: --crash and --vmm: choose one")
		return exitUsage
	}
	if *asJSON && !*crash {
		fmt.Fprintln(os.Stderr, "ember sandbox logs: --json goes with --crash")
		return exitUsage
	}
	if *crash {
		c := mk()
		defer c.Close()
		cr, err := c.Crash(ctx, fs.Arg(0))
		if err != nil {
			return fail("ember sandbox logs", err)
		}
		if *asJSON {
			return printJSON(cr)
		}
		printCrash(os.Stdout, cr)
		return exitOK
	}
	source := wire.LogConsole
	if *vmmLog {
		source = wire.LogVMM
	}
	c := mk()
	defer c.Close()
	if err := c.Logs(ctx, fs.Arg(0), source, os.Stdout); err != nil {
		return fail("ember sandbox logs", err)
	}
	return exitOK
}

// printCrash prints a crash record for a person.
func printCrash(w io.Writer, cr wire.Crash) {
	fmt.Fprintf(w, "sandbox:  %s (template %s, ember pid %d)\n", cr.Sandbox, cr.Template, cr.PID)
	fmt.Fprintf(w, "reason:   %s\n", cr.Reason)
	if cr.Message != "" {
		fmt.Fprintf(w, "message:  %s\n", cr.Message)
	}
	switch {
	case cr.Signal != 0:
		fmt.Fprintf(w, "status:   killed by signal %d (%s)\n", cr.Signal, cr.SignalName)
	case cr.Code != nil:
		fmt.Fprintf(w, "status:   exit %d\n", *cr.Code)
	default:
		fmt.Fprintln(w, "status:   unknown (ember was not emberd's child)")
	}
	fmt.Fprintf(w, "at:       %s\n", cr.At.Local().Format(time.RFC3339))
	fmt.Fprintf(w, "\n== console (last %d of %d bytes)\n%s", len(cr.Console), cr.ConsoleBytes, cr.Console)
	if cr.Console != "" && !strings.HasSuffix(cr.Console, "\n") {
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "\n== ember's log (%d lines)\n", len(cr.EmberLog))
	for _, l := range cr.EmberLog {
		fmt.Fprintln(w, l)
	}
}

// sandboxHost is `ember sandbox host`: emberd's budgets and their use.
func sandboxHost(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("ember sandbox host", flag.ContinueOnError)
	mk := emberdFlags(fs)
	asJSON := fs.Bool("json", false, "print as JSON")
	if code, ok := parseSub(fs, args, "ember sandbox host [--json]"); !ok {
		return code
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "ember sandbox host: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	c := mk()
	defer c.Close()
	h, err := c.Host(ctx)
	if err != nil {
		return fail("ember sandbox host", err)
	}
	if *asJSON {
		return printJSON(h)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BUDGET\tHELD\tLIMIT\tFREE")
	for _, r := range []struct {
		name      string
		used, lim int64
	}{
		{"memory_mib", h.Used.MemoryMiB, h.Budgets.MemoryMiB},
		{"vcpus", h.Used.VCPUs, h.Budgets.VCPUs},
		{"processes", h.Used.Processes, h.Budgets.Processes},
		{"files", h.Used.Files, h.Budgets.Files},
		{"taps", h.Used.Taps, h.Budgets.Taps},
	} {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\n", r.name, r.used, r.lim, r.lim-r.used)
	}
	tw.Flush()
	fmt.Printf("%d sandboxes hold a share; memory: %d MiB of %d given to sandboxes, overcommit %g; vCPUs: %d host CPUs, overcommit %g\n",
		h.Sandboxes, h.MemoryMiB, h.HostMemoryMiB, h.MemoryOvercommit, h.HostCPUs, h.VCPUOvercommit)
	return exitOK
}

// sandboxStats is `ember sandbox stats ID`: one sample of what the
// sandbox's guest uses.
func sandboxStats(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("ember sandbox stats", flag.ContinueOnError)
	mk := emberdFlags(fs)
	asJSON := fs.Bool("json", false, "print as JSON")
	if code, ok := parseSub(fs, args, "ember sandbox stats [--json] ID"); !ok {
		return code
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: ember sandbox stats [--json] ID")
		return exitUsage
	}
	c := mk()
	defer c.Close()
	u, err := c.Usage(ctx, fs.Arg(0))
	if err != nil {
		return fail("ember sandbox stats", err)
	}
	if *asJSON {
		return printJSON(u)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CPUS\tCPU_PCT\tCPU_S\tMEM_USED\tMEM_TOTAL\tDISK_USED\tDISK_TOTAL")
	fmt.Fprintf(tw, "%d\t%.1f\t%.2f\t%s\t%s\t%s\t%s\n", u.CPUs, u.CPUUsedPct, float64(u.CPUUserNS+u.CPUSystemNS)/1e9,
		mib(int64(u.MemUsed)), mib(int64(u.MemTotal)), mib(int64(u.DiskUsed)), mib(int64(u.DiskTotal)))
	tw.Flush()
	return exitOK
}

func sandboxExec(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("ember sandbox exec", flag.ContinueOnError)
	mk := emberdFlags(fs)
	env := kvFlag{}
	fs.Var(env, "env", "NAME=VALUE (repeatable)")
	cwd := fs.String("cwd", "", "working directory in the guest")
	user := fs.String("user", "", "user in the guest")
	stdin := fs.Bool("i", false, "send this command's standard input to the process (all of it, then EOF)")
	tty := fs.Bool("t", false, "run the process on a terminal (of this terminal's size, else 80x24)")
	tag := fs.String("tag", "", "name the process, for `ember sandbox attach` (default: generated, printed on stderr)")
	if code, ok := parseSub(fs, args, "ember sandbox exec [flags] ID -- CMD [ARGS...]"); !ok {
		return code
	}
	if fs.NArg() < 2 {
		fmt.Fprintln(os.Stderr, "ember sandbox exec: want the sandbox ID and a command")
		return exitUsage
	}
	argv := fs.Args()[1:]
	if argv[0] == "--" { // the flag package stops at the ID and keeps what follows
		argv = argv[1:]
	}
	if len(argv) == 0 {
		fmt.Fprintln(os.Stderr, "ember sandbox exec: want a command after the sandbox ID")
		return exitUsage
	}
	req := wire.ExecRequest{Args: argv, Env: env, Cwd: *cwd, User: *user, Tag: *tag}
	if *tty {
		req.TTY = terminalSize()
	}
	if *stdin {
		data, err := io.ReadAll(os.Stdin)
		if err != nil {
			return fail("ember sandbox exec", err)
		}
		req.Stdin = data
		if req.Stdin == nil {
			req.Stdin = []byte{}
		}
	}
	c := mk()
	defer c.Close()
	var got int64
	stdout, stderr := countingWriter{os.Stdout, &got}, countingWriter{os.Stderr, &got}
	procTag := ""
	started := func(e wire.ExecStarted) {
		procTag = e.Tag
		if *tag == "" {
			fmt.Fprintf(os.Stderr, "ember sandbox exec: process %s\n", e.Tag)
		}
	}
	st, err := c.ExecWith(ctx, fs.Arg(0), req, started, stdout, stderr)
	if err != nil && procTag != "" && client.StatusOf(err) == 0 {
		fmt.Fprintf(os.Stderr, "ember sandbox exec: the stream broke after %d bytes of output; the rest: ember sandbox attach --from %d %s %s\n",
			got, got, fs.Arg(0), procTag)
	}
	if err != nil {
		return fail("ember sandbox exec", err)
	}
	if st.OOMKilled {
		fmt.Fprintln(os.Stderr, "ember sandbox exec: the guest's OOM killer ended the process")
	}
	return exitStatus(st.Code, st.Signal)
}

// sandboxAttach is `ember sandbox attach [--from N] ID TAG`.
func sandboxAttach(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("ember sandbox attach", flag.ContinueOnError)
	mk := emberdFlags(fs)
	from := fs.Int64("from", 0, "output offset to start from: the bytes of output already had (0: all the agent holds)")
	if code, ok := parseSub(fs, args, "ember sandbox attach [--from N] ID TAG"); !ok {
		return code
	}
	if fs.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "ember sandbox attach: want the sandbox ID and the process's tag")
		return exitUsage
	}
	c := mk()
	defer c.Close()
	st, err := c.Attach(ctx, fs.Arg(0), fs.Arg(1), *from, nil, os.Stdout, os.Stderr)
	if err != nil {
		return fail("ember sandbox attach", err)
	}
	return exitStatus(st.Code, st.Signal)
}

// sandboxCopy is `ember sandbox cp SRC DST`, one of them ID:PATH.
func sandboxCopy(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("ember sandbox cp", flag.ContinueOnError)
	mk := emberdFlags(fs)
	const usage = "ember sandbox cp LOCAL_FILE ID:GUEST_PATH | ID:GUEST_PATH LOCAL_FILE (- is stdin or stdout)"
	if code, ok := parseSub(fs, args, usage); !ok {
		return code
	}
	if fs.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage:", usage)
		return exitUsage
	}
	src, dst := fs.Arg(0), fs.Arg(1)
	sid, spath, sremote := strings.Cut(src, ":")
	did, dpath, dremote := strings.Cut(dst, ":")
	c := mk()
	defer c.Close()
	switch {
	case dremote && !sremote:
		in := os.Stdin
		if src != "-" {
			f, err := os.Open(src)
			if err != nil {
				return fail("ember sandbox cp", err)
			}
			defer f.Close()
			in = f
		}
		if err := c.Upload(ctx, did, dpath, in); err != nil {
			return fail("ember sandbox cp", err)
		}
	case sremote && !dremote:
		if dst == "-" {
			if err := c.Download(ctx, sid, spath, os.Stdout); err != nil {
				return fail("ember sandbox cp", err)
			}
			return exitOK
		}
		// Into a temporary name beside dst, renamed once complete: a
		// failed copy leaves no half-written file.
		tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".*")
		if err != nil {
			return fail("ember sandbox cp", err)
		}
		err = c.Download(ctx, sid, spath, tmp)
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), dst)
		}
		if err != nil {
			os.Remove(tmp.Name())
			return fail("ember sandbox cp", err)
		}
	default:
		fmt.Fprintln(os.Stderr, "ember sandbox cp: exactly one of the two must be ID:PATH; usage:", usage)
		return exitUsage
	}
	return exitOK
}

// countingWriter counts what it passes on.
type countingWriter struct {
	w io.Writer
	n *int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	*c.n += int64(n)
	return n, err
}

// terminalSize is stdout's terminal size, or 80x24.
func terminalSize() *proto.TTYSize {
	if ws, err := unix.IoctlGetWinsize(int(os.Stdout.Fd()), unix.TIOCGWINSZ); err == nil && ws.Col > 0 && ws.Row > 0 {
		return &proto.TTYSize{Cols: ws.Col, Rows: ws.Row}
	}
	return &proto.TTYSize{Cols: defaultCols, Rows: defaultRows}
}

// defaultCols and defaultRows are a terminal's size when this command's
// output is not a terminal (VT100's 80x24).
const (
	defaultCols = 80
	defaultRows = 24
)

// exitStatus is a shell's status for a process's end: its code, or 128
// plus the signal that ended it.
func exitStatus(code, signal int) int {
	if signal > 0 {
		return exitSignalBase + signal
	}
	return code
}

// exitSignalBase is what a shell adds to the number of the signal that
// ended a process (POSIX sh: "greater than 128").
const exitSignalBase = 128

// runTemplateCmd is `ember template ...`.
func runTemplateCmd(args []string) int {
	const usage = "ember template build|ls|rm ..."
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage:", usage)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "build":
		return templateBuild(ctx, args[1:])
	case "ls", "list":
		return listCmd(args[1:], "ember template ls", "templates", func(c *client.Client) ([]wire.Template, error) { return c.Templates(ctx) },
			"ID\tSTATE\tVCPUS\tMEMORY_MIB\tREADY\tBUILD_MS", func(t wire.Template) string {
				return fmt.Sprintf("%s\t%s\t%d\t%d\t%s\t%.1f", t.ID, t.State, t.Spec.VCPUs, t.Spec.MemoryMiB, t.Spec.Ready.Kind, t.BuildMS)
			})
	case "rm":
		return sandboxEach(ctx, "ember template rm", args[1:], func(c *client.Client, id string) error {
			return c.DeleteTemplate(ctx, id)
		})
	}
	fmt.Fprintf(os.Stderr, "ember template: unknown command %q; usage: %s\n", args[0], usage)
	return exitUsage
}

func templateBuild(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("ember template build", flag.ContinueOnError)
	mk := emberdFlags(fs)
	var spec wire.TemplateSpec
	fs.StringVar(&spec.Name, "name", "", "the template's name (default: generated)")
	fs.StringVar(&spec.Image, "image", "", "an image of Ember's store, booted with the agent (needs --ready agent)")
	fs.StringVar(&spec.Kernel, "kernel", "", "guest kernel or tiny guest (absolute path)")
	fs.StringVar(&spec.Initrd, "initrd", "", "initrd (absolute path)")
	fs.StringVar(&spec.BootArgs, "boot-args", "", "kernel command line (default: Ember's)")
	fs.StringVar(&spec.Rootfs, "rootfs", "", "raw root filesystem, the read-only base of every sandbox's overlay")
	fs.BoolVar(&spec.Network, "network", false, "give the guest a network interface (each sandbox its own network; needs emberd --network and --ready agent)")
	fs.IntVar(&spec.VCPUs, "vcpus", 1, "vCPUs")
	fs.IntVar(&spec.MemoryMiB, "mem-mib", wire.DefaultMemoryMiB, "memory in MiB")
	ready := fs.String("ready", wire.ReadyAgent, "readiness: agent, boot-timer, or console:TEXT[:RESTORED_TEXT]")
	timeout := fs.Duration("ready-timeout", 0, "bound of the readiness wait (default emberd's)")
	var start []string
	fs.Var(listFlag{&start}, "start", "start command, one argument per flag (needs --ready agent)")
	asJSON := fs.Bool("json", false, "print the template as JSON")
	if code, ok := parseSub(fs, args, "ember template build --kernel PATH [flags]"); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "ember template build: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	kind, rest, _ := strings.Cut(*ready, ":")
	spec.Ready.Kind = kind
	if kind == wire.ReadyConsole {
		spec.Ready.Console, spec.Ready.RestoredConsole, _ = strings.Cut(rest, ":")
	}
	spec.Ready.TimeoutMS = int(timeout.Milliseconds())
	spec.Start = start
	c := mk()
	defer c.Close()
	fmt.Fprintln(os.Stderr, "building: boot, wait until ready, snapshot...")
	t, err := c.BuildTemplate(ctx, spec)
	if err != nil {
		return fail("ember template build", err)
	}
	if *asJSON {
		return printJSON(t)
	}
	fmt.Println(t.ID)
	fmt.Fprintf(os.Stderr, "built in %.1f ms\n", t.BuildMS)
	return exitOK
}
