// Command apiserver-check validates the smtpfleet CRDs and the test fixtures with the
// Kubernetes API server's own code (k8s.io/apiextensions-apiserver at the oldest
// supported minor version), so that the Rust tests' stand-ins (the jsonschema and
// kube-cel crates) can be compared with the real thing:
//
//   - each CRD passes ValidateCustomResourceDefinition: structural schema, defaults,
//     CEL compilation and the CEL cost budget;
//   - each fixture goes through what a create or update does: pruning, defaulting,
//     OpenAPI validation, list-map/set uniqueness and CEL rules (with the old object
//     for update fixtures), and is accepted or rejected as its directory says, with
//     errors at every `# expect-field:` path and, for rule messages, every `# expect:`
//     text.
//
// Usage: go run . <crds-dir> <fixtures-dir>
package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	crdvalidation "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	structuraldefaulting "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/listtype"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	apiservervalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"k8s.io/apimachinery/pkg/util/validation/field"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"
)

// Phrases of the Rust tests' OpenAPI validator; the API server words those failures
// differently, so `# expect:` lines containing them are checked by path only.
var openAPIPhrases = []string{
	"does not match", "is not one of", "minimum", "maximum", "required property",
	"has more than", "has less than", "is shorter than", "is longer than",
}

type kindSchema struct {
	internal   *apiextensions.JSONSchemaProps
	structural *structuralschema.Structural
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: apiserver-check <crds-dir> <fixtures-dir>")
		os.Exit(2)
	}
	ctx := context.Background()
	passed, failed := 0, 0
	kinds, crdFailures := loadCRDs(ctx, os.Args[1])
	passed += len(kinds)
	failed += crdFailures
	fixtures := listFixtures(os.Args[2])
	for _, path := range fixtures {
		problems := checkFixture(ctx, kinds, os.Args[2], path)
		if len(problems) == 0 {
			passed++
			continue
		}
		failed++
		for _, p := range problems {
			fmt.Println(p)
		}
	}
	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 || len(fixtures) == 0 {
		os.Exit(1)
	}
}

func loadCRDs(ctx context.Context, dir string) (map[string]kindSchema, int) {
	kinds := map[string]kindSchema{}
	failures := 0
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	must(err)
	for _, file := range files {
		data, err := os.ReadFile(file)
		must(err)
		var v1 apiextensionsv1.CustomResourceDefinition
		must(yaml.UnmarshalStrict(data, &v1))
		apiextensionsv1.SetObjectDefaults_CustomResourceDefinition(&v1)
		var crd apiextensions.CustomResourceDefinition
		must(apiextensionsv1.Convert_v1_CustomResourceDefinition_To_apiextensions_CustomResourceDefinition(&v1, &crd, nil))
		crd.Status.StoredVersions = []string{crd.Spec.Versions[0].Name}
		if errs := crdvalidation.ValidateCustomResourceDefinition(ctx, &crd); len(errs) > 0 {
			failures++
			fmt.Printf("CRD %s rejected:\n", crd.Name)
			for _, e := range errs {
				fmt.Printf("    %v\n", e)
			}
			continue
		}
		// With a single version the internal form keeps the schema at the top level.
		internal := crd.Spec.Validation.OpenAPIV3Schema
		if crd.Spec.Versions[0].Schema != nil {
			internal = crd.Spec.Versions[0].Schema.OpenAPIV3Schema
		}
		structural, err := structuralschema.NewStructural(internal)
		must(err)
		structural = structural.DeepCopy()
		must(structuraldefaulting.PruneDefaults(structural))
		kinds[crd.Spec.Names.Kind] = kindSchema{internal: internal, structural: structural}
	}
	return kinds, failures
}

func listFixtures(dir string) []string {
	var paths []string
	for _, pattern := range []string{"*/valid/*.yaml", "*/invalid/*.yaml"} {
		matches, err := filepath.Glob(filepath.Join(dir, pattern))
		must(err)
		paths = append(paths, matches...)
	}
	sort.Strings(paths)
	return paths
}

func directives(data []byte, prefix string) []string {
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			out = append(out, strings.TrimSpace(rest))
		}
	}
	return out
}

// decode reads YAML the way the API server reads JSON: integers stay int64.
func decode(doc []byte) map[string]interface{} {
	js, err := yaml.YAMLToJSON(doc)
	must(err)
	var obj map[string]interface{}
	must(utiljson.Unmarshal(js, &obj))
	return obj
}

func checkFixture(ctx context.Context, kinds map[string]kindSchema, root, path string) []string {
	data, err := os.ReadFile(path)
	must(err)
	name, _ := filepath.Rel(root, path)
	docs := bytes.Split(data, []byte("\n---\n"))
	var oldObj map[string]interface{}
	obj := decode(docs[len(docs)-1])
	if len(docs) == 2 {
		oldObj = decode(docs[0])
	}
	kind, _ := obj["kind"].(string)
	ks, ok := kinds[kind]
	if !ok {
		return []string{fmt.Sprintf("%s: no CRD for kind %q", name, kind)}
	}
	admit := func(o map[string]interface{}) {
		pruning.Prune(o, ks.structural, true)
		structuraldefaulting.Default(o, ks.structural)
	}
	admit(obj)
	var old interface{}
	if oldObj != nil {
		admit(oldObj)
		old = oldObj
	}
	validator, _, err := apiservervalidation.NewSchemaValidator(ks.internal)
	must(err)
	var errs field.ErrorList
	errs = append(errs, apiservervalidation.ValidateCustomResource(nil, obj, validator)...)
	errs = append(errs, listtype.ValidateListSetsAndMaps(nil, ks.structural, obj)...)
	celErrs, _ := cel.NewValidator(ks.structural, true, celconfig.PerCallLimit).
		Validate(ctx, nil, ks.structural, obj, old, celconfig.RuntimeCELCostBudget)
	errs = append(errs, celErrs...)

	var problems []string
	invalid := strings.Contains(filepath.ToSlash(name), "/invalid/")
	switch {
	case invalid && len(errs) == 0:
		problems = append(problems, name+": accepted, but the fixture is invalid")
	case !invalid && len(errs) > 0:
		problems = append(problems, name+": rejected, but the fixture is valid")
	}
	for _, want := range directives(data, "# expect-field:") {
		if !hasError(errs, func(e *field.Error) bool { return e.Field == want }) {
			problems = append(problems, fmt.Sprintf("%s: no error at %s", name, want))
		}
	}
	for _, want := range directives(data, "# expect:") {
		if isOpenAPIPhrase(want) {
			continue
		}
		if !hasError(errs, func(e *field.Error) bool { return strings.Contains(e.Error(), want) }) {
			problems = append(problems, fmt.Sprintf("%s: no error says %q", name, want))
		}
	}
	if len(problems) > 0 {
		for _, e := range errs {
			problems = append(problems, "    got: "+e.Error())
		}
	}
	return problems
}

func hasError(errs field.ErrorList, match func(*field.Error) bool) bool {
	for _, e := range errs {
		if match(e) {
			return true
		}
	}
	return false
}

func isOpenAPIPhrase(text string) bool {
	for _, phrase := range openAPIPhrases {
		if strings.Contains(text, phrase) {
			return true
		}
	}
	return false
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}
