package mmds

// MergePatch applies patch to target as RFC 7396 (JSON Merge Patch)
// section 2 defines it, and returns the result: a patch that is not an
// object replaces the target; an object patch makes the target an object
// (if it was not one) and, key by key, removes the keys whose patch value
// is null and merges the others recursively.
//
// Neither argument is modified: the objects on the way to a change are
// copied, the rest of target is shared with the result (the store never
// modifies a published value, so sharing is safe).
func MergePatch(target, patch any) any {
	p, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	t, _ := target.(map[string]any)
	out := make(map[string]any, len(t)+len(p))
	for k, v := range t {
		out[k] = v
	}
	for k, v := range p {
		if v == nil {
			delete(out, k)
			continue
		}
		out[k] = MergePatch(out[k], v)
	}
	return out
}
