package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/embervm/ember/sandbox/client"
	"github.com/embervm/ember/sandbox/wire"
)

// runAPIKeyCmd is `ember apikey create|ls|rm`: the keys of emberd's
// E2B-compatible API.
func runAPIKeyCmd(args []string) int {
	const usage = "ember apikey create [--name NAME] | ls [--json] | rm ID..."
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage:", usage)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "create":
		fs := flag.NewFlagSet("ember apikey create", flag.ContinueOnError)
		mk := emberdFlags(fs)
		name := fs.String("name", "", "a name to recognise the key by")
		if code, ok := parseSub(fs, args[1:], "ember apikey create [--name NAME]"); !ok {
			return code
		}
		if fs.NArg() > 0 {
			fmt.Fprintf(os.Stderr, "ember apikey create: unexpected argument %q\n", fs.Arg(0))
			return exitUsage
		}
		c := mk()
		defer c.Close()
		k, err := c.CreateAPIKey(ctx, *name)
		if err != nil {
			return fail("ember apikey create", err)
		}
		fmt.Println(k.Key)
		fmt.Fprintf(os.Stderr, "API key %s made; emberd keeps only its hash: this is the only time it is shown\n", k.ID)
		return exitOK
	case "ls", "list":
		return listCmd(args[1:], "ember apikey ls", "keys", func(c *client.Client) ([]wire.APIKey, error) { return c.APIKeys(ctx) },
			"ID\tNAME\tKEY\tCREATED", func(k wire.APIKey) string {
				return fmt.Sprintf("%s\t%s\t%s...\t%s", k.ID, k.Name, k.Shown, k.CreatedAt.Local().Format(time.DateTime))
			})
	case "rm", "delete":
		fs := flag.NewFlagSet("ember apikey rm", flag.ContinueOnError)
		mk := emberdFlags(fs)
		if code, ok := parseSub(fs, args[1:], "ember apikey rm ID..."); !ok {
			return code
		}
		if fs.NArg() == 0 {
			fmt.Fprintln(os.Stderr, "ember apikey rm: want one or more key IDs (ember apikey ls)")
			return exitUsage
		}
		c := mk()
		defer c.Close()
		code := exitOK
		for _, id := range fs.Args() {
			if err := c.DeleteAPIKey(ctx, id); err != nil {
				code = fail("ember apikey rm", err)
			}
		}
		return code
	}
	fmt.Fprintf(os.Stderr, "ember apikey: unknown command %q; usage: %s\n", args[0], usage)
	return exitUsage
}

// runE2BCmd is `ember e2b env`: the variables that point E2B's SDK at
// emberd (a new API key unless --key gives one).
func runE2BCmd(args []string) int {
	const usage = "ember e2b env [--key KEY]"
	if len(args) == 0 || args[0] != "env" {
		fmt.Fprintln(os.Stderr, "usage:", usage)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fs := flag.NewFlagSet("ember e2b env", flag.ContinueOnError)
	mk := emberdFlags(fs)
	key := fs.String("key", "", "the API key to print (default: a new key named \"ember e2b env\")")
	if code, ok := parseSub(fs, args[1:], usage); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "ember e2b env: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	c := mk()
	defer c.Close()
	info, err := c.E2B(ctx)
	if err != nil {
		return fail("ember e2b env", err)
	}
	if *key == "" {
		k, err := c.CreateAPIKey(ctx, "ember e2b env")
		if err != nil {
			return fail("ember e2b env", err)
		}
		*key = k.Key
	}
	// Printed here rather than by package sandbox/e2b, which would link
	// the Connect runtime into ember.
	fmt.Printf("export E2B_API_URL=%s\nexport E2B_SANDBOX_URL=%s\nexport E2B_DOMAIN=%s\nexport E2B_API_KEY=%s\n", info.APIURL, info.SandboxURL, info.Domain, *key)
	return exitOK
}
