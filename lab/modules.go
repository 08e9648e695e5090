package lab

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"strings"
)

// ModuleDB is the content of a kernel's modules.dep (and modules.builtin),
// keyed by canonical module name (see ModuleName).
type ModuleDB struct {
	// Path maps a module name to its path relative to lib/modules/VERSION.
	Path map[string]string
	// Deps maps a module name to the names of the modules it needs.
	Deps map[string][]string
	// Builtin holds the names of modules built into the kernel.
	Builtin map[string]bool
}

// ModuleName returns the canonical name of a module given as a name or as a
// path: the base name without .ko (and compression suffix), with dashes
// replaced by underscores, as the kernel itself does.
func ModuleName(s string) string {
	s = path.Base(s)
	for _, suffix := range []string{".xz", ".zst", ".gz"} {
		s = strings.TrimSuffix(s, suffix)
	}
	s = strings.TrimSuffix(s, ".ko")
	return strings.ReplaceAll(s, "-", "_")
}

// ParseModulesDep reads modules.dep ("path: dep-path dep-path ...") and,
// if builtin is not nil, modules.builtin (one path a line).
func ParseModulesDep(dep, builtin io.Reader) (*ModuleDB, error) {
	db := &ModuleDB{
		Path:    make(map[string]string),
		Deps:    make(map[string][]string),
		Builtin: make(map[string]bool),
	}
	sc := bufio.NewScanner(dep)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for lineNo := 1; sc.Scan(); lineNo++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		modPath, rest, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("modules.dep line %d: no colon in %q", lineNo, line)
		}
		name := ModuleName(modPath)
		db.Path[name] = modPath
		var deps []string
		for _, d := range strings.Fields(rest) {
			deps = append(deps, ModuleName(d))
		}
		db.Deps[name] = deps
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading modules.dep: %w", err)
	}
	if builtin != nil {
		sc := bufio.NewScanner(builtin)
		for sc.Scan() {
			if line := strings.TrimSpace(sc.Text()); line != "" {
				db.Builtin[ModuleName(line)] = true
			}
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("reading modules.builtin: %w", err)
		}
	}
	return db, nil
}

// Resolve returns the loadable modules needed for wanted, dependencies
// first, each once, in an order in which insmod succeeds. Modules built into
// the kernel are skipped; an unknown module is an error.
func (db *ModuleDB) Resolve(wanted []string) ([]string, error) {
	const (
		unvisited = iota
		visiting
		done
	)
	state := make(map[string]int)
	var order []string
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
		}
		if _, ok := db.Path[name]; !ok {
			if db.Builtin[name] {
				state[name] = done
				return nil
			}
			if len(chain) > 0 {
				return fmt.Errorf("module %s (needed by %s) is not in modules.dep", name, chain[len(chain)-1])
			}
			return fmt.Errorf("module %s is neither in modules.dep nor built in", name)
		}
		state[name] = visiting
		for _, d := range db.Deps[name] {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = done
		order = append(order, name)
		return nil
	}
	for _, w := range wanted {
		if err := visit(ModuleName(w), nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
