# Kubernetes targets: a kind (or minikube) demo cluster running the operator, the backing
# services and a MessengerApp. Included from the top-level Makefile.
#
#   make k8s-deploy-all     cluster (if absent) + ingress-nginx + images + CRD + operator +
#                           dependencies + sample app + hosts entry, then print the URLs
#   make k8s-undeploy       remove the sample, the dependencies and the operator (keeps the cluster)
#   make k8s-cluster-delete delete the kind cluster / stop minikube
#
# Rollouts (through `kubectl messenger rollout`, built from this tree):
#   make k8s-blue-green       the blue-green sample at K8S_VERSION
#   make k8s-apply-green      roll K8S_NEW_VERSION into the other slot and switch to it
#   make k8s-apply-blue       roll K8S_VERSION back in and switch to it
#   make k8s-canary           the canary sample at K8S_VERSION
#   make k8s-canary-migrate   start a canary to K8S_NEW_VERSION and step through it
#   make k8s-canary-apply     promote the canary fully now
#   make k8s-canary-rollback  abort: all traffic back at once, spec back to K8S_VERSION
#
# Needs: docker or podman, kubectl (>= 1.23), and kind or minikube. See docs/deploy.md.

K8S_CLUSTER_TOOL ?= $(shell if command -v kind >/dev/null 2>&1; then echo kind; elif command -v minikube >/dev/null 2>&1; then echo minikube; else echo none; fi)
KIND_CLUSTER_NAME ?= messenger
KUBECTL ?= kubectl
# What builds the images: docker if present, else podman (CONTAINER_TOOL=podman to choose).
CONTAINER_TOOL ?= $(shell if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then echo docker; elif command -v podman >/dev/null 2>&1; then echo podman; else echo docker; fi)
# Extra `build` arguments, e.g. `--build-arg RUNTIME_IMAGE=...` (scripts/images.sh passes the
# local base image and BINARIES=prebuilt), and the build context.
K8S_BUILD_ARGS ?=
K8S_BUILD_CONTEXT ?= .
# Image tag of every component and of the operator; the samples use 0.1.0.
K8S_VERSION ?= 0.1.0
IMAGE_REGISTRY ?= ghcr.io/messenger
K8S_COMPONENTS ?= auth users friends chat gateway
K8S_SAMPLE ?= config/samples/messengerapp_full.yaml
K8S_APP_NAMESPACE ?= messenger
K8S_APP_NAME ?= messenger
K8S_APP_HOSTS ?= messenger.local preview.messenger.local
INGRESS_NGINX_VERSION ?= controller-v1.12.1
INGRESS_NGINX_KIND_MANIFEST ?= https://raw.githubusercontent.com/kubernetes/ingress-nginx/$(INGRESS_NGINX_VERSION)/deploy/static/provider/kind/deploy.yaml
K8S_WAIT_TIMEOUT ?= 300s
# The version rollouts move to (build it with `make k8s-images K8S_VERSION=...`).
K8S_NEW_VERSION ?= 0.2.0
K8S_BG_SAMPLE ?= config/samples/messengerapp_blue_green.yaml
K8S_BG_APP ?= messenger-bg
K8S_CANARY_SAMPLE ?= config/samples/messengerapp_canary.yaml
K8S_CANARY_APP ?= messenger-canary-nginx
ROLLOUT ?= cargo run -q --locked -p messenger-operator --bin kubectl-messenger -- rollout

.PHONY: k8s-deploy-all k8s-undeploy k8s-cluster k8s-cluster-delete k8s-ingress k8s-images \
        k8s-images-build k8s-images-load k8s-render-operator k8s-render-sample \
        k8s-operator k8s-dependencies k8s-sample k8s-hosts k8s-urls k8s-check-tools \
        k8s-blue-green k8s-apply-green k8s-apply-blue k8s-canary k8s-canary-migrate \
        k8s-canary-apply k8s-canary-rollback

k8s-deploy-all: ## kind/minikube cluster (if absent), ingress, images, CRD, operator, dependencies, sample app
	@$(MAKE) --no-print-directory k8s-check-tools
	@$(MAKE) --no-print-directory k8s-cluster
	@$(MAKE) --no-print-directory k8s-ingress
	@$(MAKE) --no-print-directory k8s-images
	@$(MAKE) --no-print-directory k8s-operator
	@$(MAKE) --no-print-directory k8s-dependencies
	@$(MAKE) --no-print-directory k8s-sample
	@$(MAKE) --no-print-directory k8s-hosts
	@$(MAKE) --no-print-directory k8s-urls

k8s-check-tools:
	@command -v $(KUBECTL) >/dev/null || { echo "k8s: kubectl not found" >&2; exit 1; }
	@command -v $(CONTAINER_TOOL) >/dev/null || { echo "k8s: neither docker nor podman found (needed to build the images)" >&2; exit 1; }
	@[ "$(K8S_CLUSTER_TOOL)" != none ] || { echo "k8s: neither kind nor minikube is installed" >&2; exit 1; }
	@echo "k8s: using $(K8S_CLUSTER_TOOL), images built with $(CONTAINER_TOOL)"

k8s-cluster:
ifeq ($(K8S_CLUSTER_TOOL),kind)
	@if kind get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER_NAME)'; then \
	  echo "k8s: kind cluster $(KIND_CLUSTER_NAME) exists"; \
	else \
	  kind create cluster --name $(KIND_CLUSTER_NAME) --config kind.yaml --wait 120s; \
	fi
	@$(KUBECTL) config use-context kind-$(KIND_CLUSTER_NAME) >/dev/null
else
	@minikube status >/dev/null 2>&1 || minikube start
	@$(KUBECTL) config use-context minikube >/dev/null
endif

k8s-cluster-delete: ## delete the kind cluster or stop minikube
ifeq ($(K8S_CLUSTER_TOOL),kind)
	kind delete cluster --name $(KIND_CLUSTER_NAME)
else
	minikube stop
endif

k8s-ingress:
ifeq ($(K8S_CLUSTER_TOOL),kind)
	$(KUBECTL) apply -f $(INGRESS_NGINX_KIND_MANIFEST)
else
	minikube addons enable ingress
endif
	$(KUBECTL) -n ingress-nginx wait --for=condition=Available deployment/ingress-nginx-controller --timeout=$(K8S_WAIT_TIMEOUT)

k8s-images:
	@$(MAKE) --no-print-directory k8s-images-build
	@$(MAKE) --no-print-directory k8s-images-load

# One BuildKit build (docker) or one layer cache (podman); each --target reuses the builder
# stage. podman keeps HEALTHCHECK only in the docker image format.
k8s-images-build:
	@set -e; for c in $(K8S_COMPONENTS) operator; do \
	  image=$(IMAGE_REGISTRY)/messenger-$$c:$(K8S_VERSION); \
	  echo "k8s: building $$image with $(CONTAINER_TOOL)"; \
	  if [ "$(CONTAINER_TOOL)" = podman ]; then \
	    podman build --format docker $(K8S_BUILD_ARGS) --target $$c -t $$image -f $(CURDIR)/Dockerfile $(K8S_BUILD_CONTEXT); \
	  else \
	    DOCKER_BUILDKIT=1 $(CONTAINER_TOOL) build $(K8S_BUILD_ARGS) --target $$c -t $$image -f $(CURDIR)/Dockerfile $(K8S_BUILD_CONTEXT); \
	  fi; \
	done

# kind and minikube take docker's images by name; podman's go through an image archive.
k8s-images-load:
	@set -e; archive=$$(mktemp --suffix=.tar); trap 'rm -f "$$archive"' EXIT; \
	for c in $(K8S_COMPONENTS) operator; do \
	  image=$(IMAGE_REGISTRY)/messenger-$$c:$(K8S_VERSION); \
	  echo "k8s: loading $$image into $(K8S_CLUSTER_TOOL)"; \
	  if [ "$(CONTAINER_TOOL)" = podman ]; then \
	    rm -f "$$archive"; podman save --format docker-archive -o "$$archive" $$image >/dev/null; \
	    if [ "$(K8S_CLUSTER_TOOL)" = kind ]; then kind load image-archive "$$archive" --name $(KIND_CLUSTER_NAME); \
	    else minikube image load "$$archive"; fi; \
	  elif [ "$(K8S_CLUSTER_TOOL)" = kind ]; then kind load docker-image $$image --name $(KIND_CLUSTER_NAME); \
	  else minikube image load $$image; fi; \
	done

# config/default with the operator image pinned to the tag just built (a throw-away overlay,
# so the checked-in kustomization stays generic; kustomize wants a relative path to it).
# Printed by k8s-render-operator, which operator/tests/kustomize.rs submits to its API server.
k8s-render-operator:
	@set -e; overlay=$$(mktemp -d); trap 'rm -rf "$$overlay"' EXIT; \
	base=$$(realpath --relative-to="$$overlay" "$(CURDIR)/config/default"); \
	printf '%s\n' \
	  'apiVersion: kustomize.config.k8s.io/v1beta1' \
	  'kind: Kustomization' \
	  'bases:' \
	  "  - $$base" \
	  'images:' \
	  '  - name: ghcr.io/messenger/messenger-operator' \
	  '    newName: $(IMAGE_REGISTRY)/messenger-operator' \
	  '    newTag: "$(K8S_VERSION)"' >"$$overlay/kustomization.yaml"; \
	$(KUBECTL) kustomize "$$overlay"

k8s-operator:
	@set -eo pipefail; $(MAKE) -s --no-print-directory k8s-render-operator | $(KUBECTL) apply -f -
	$(KUBECTL) wait --for=condition=Established crd/messengerapps.messenger.dev --timeout=60s
	$(KUBECTL) -n messenger-system rollout status deployment/messenger-operator --timeout=$(K8S_WAIT_TIMEOUT)

k8s-dependencies:
	$(KUBECTL) apply -k config/dependencies
	$(KUBECTL) -n $(K8S_APP_NAMESPACE) rollout status statefulset/postgres --timeout=$(K8S_WAIT_TIMEOUT)
	$(KUBECTL) -n $(K8S_APP_NAMESPACE) rollout status deployment/redis --timeout=$(K8S_WAIT_TIMEOUT)
	$(KUBECTL) -n $(K8S_APP_NAMESPACE) rollout status statefulset/mongodb --timeout=$(K8S_WAIT_TIMEOUT)
	$(KUBECTL) -n $(K8S_APP_NAMESPACE) rollout status statefulset/kafka --timeout=$(K8S_WAIT_TIMEOUT)

# The sample with spec.version and spec.image.registry set to what k8s-images built (printed
# by k8s-render-sample, which operator/tests/kustomize.rs submits to its API server).
k8s-render-sample:
	@$(KUBECTL) patch --local -f $(K8S_SAMPLE) -o yaml --type merge \
	  -p '{"spec":{"version":"$(K8S_VERSION)","image":{"registry":"$(IMAGE_REGISTRY)"}}}'

k8s-sample:
	@set -eo pipefail; $(MAKE) -s --no-print-directory k8s-render-sample | $(KUBECTL) apply -f -
	$(KUBECTL) -n $(K8S_APP_NAMESPACE) wait messengerapp/$(K8S_APP_NAME) \
	  --for=jsonpath='{.status.phase}'=Healthy --timeout=$(K8S_WAIT_TIMEOUT)
	$(KUBECTL) -n $(K8S_APP_NAMESPACE) get messengerapp $(K8S_APP_NAME)

# kind maps the node's ports 80/443 to the host; minikube's ingress answers on its node IP.
k8s-hosts:
	@set -e; \
	if [ "$(K8S_CLUSTER_TOOL)" = kind ]; then ip=127.0.0.1; else ip=$$(minikube ip); fi; \
	for host in $(K8S_APP_HOSTS); do \
	  if grep -qE "^[^#]*[[:space:]]$$host([[:space:]]|$$)" /etc/hosts; then \
	    echo "k8s: /etc/hosts already resolves $$host"; \
	  else \
	    line="$$ip $$host # messenger k8s-deploy-all"; \
	    if [ -w /etc/hosts ]; then echo "$$line" >>/etc/hosts; else echo "$$line" | sudo tee -a /etc/hosts >/dev/null; fi; \
	    echo "k8s: added '$$line' to /etc/hosts"; \
	  fi; \
	done

k8s-urls:
	@echo
	@echo "Messenger on $(K8S_CLUSTER_TOOL):"
	@for host in $(K8S_APP_HOSTS); do echo "  http://$$host/"; done
	@echo "  REST API:      http://$(firstword $(K8S_APP_HOSTS))/v1/"
	@echo "  status:        $(KUBECTL) -n $(K8S_APP_NAMESPACE) get messengerapp $(K8S_APP_NAME)"
	@echo "  operator logs: $(KUBECTL) -n messenger-system logs -l app.kubernetes.io/name=messenger-operator -f"

k8s-undeploy: ## remove the sample app, the dependencies and the operator (keeps the cluster)
	-$(KUBECTL) -n $(K8S_APP_NAMESPACE) delete messengerapp $(K8S_APP_NAME) --ignore-not-found --wait=true --timeout=120s
	-$(KUBECTL) delete -k config/dependencies --ignore-not-found
	-$(KUBECTL) delete -k config/default --ignore-not-found
	@echo "k8s: the /etc/hosts entries marked '# messenger k8s-deploy-all' are left in place; the cluster is kept (make k8s-cluster-delete)"

# --- Rollouts -----------------------------------------------------------------------------

# Applies SAMPLE at K8S_VERSION and waits until it is Healthy.
define apply_sample
	$(KUBECTL) patch --local -f $(1) -o yaml --type merge \
	  -p '{"spec":{"version":"$(K8S_VERSION)","image":{"registry":"$(IMAGE_REGISTRY)"}}}' \
	  | $(KUBECTL) apply -f -
	$(KUBECTL) -n $(K8S_APP_NAMESPACE) wait messengerapp/$(2) \
	  --for=jsonpath='{.status.phase}'=Healthy --timeout=$(K8S_WAIT_TIMEOUT)
	$(ROLLOUT) status $(2) -n $(K8S_APP_NAMESPACE)
endef

# Sets the version, promotes whenever the rollout waits for it (once the operator has
# acknowledged the previous promote), until it is Healthy at that version.
define roll_to
	$(ROLLOUT) set-version $(1) $(2) -n $(K8S_APP_NAMESPACE)
	@set -e; deadline=$$(( $$(date +%s) + 900 )); \
	while :; do \
	  sleep 3; \
	  phase=$$($(KUBECTL) -n $(K8S_APP_NAMESPACE) get messengerapp $(1) -o jsonpath='{.status.phase}'); \
	  version=$$($(KUBECTL) -n $(K8S_APP_NAMESPACE) get messengerapp $(1) -o jsonpath='{.status.stableVersion}'); \
	  echo "k8s: $(1) $$phase (stable $$version)"; \
	  if [ "$$phase" = Healthy ] && [ "$$version" = "$(2)" ]; then break; fi; \
	  if [ "$$phase" = Degraded ]; then $(ROLLOUT) status $(1) -n $(K8S_APP_NAMESPACE); exit 1; fi; \
	  asked=$$($(KUBECTL) -n $(K8S_APP_NAMESPACE) get messengerapp $(1) -o jsonpath='{.metadata.annotations.messenger\.dev/promote}'); \
	  done_=$$($(KUBECTL) -n $(K8S_APP_NAMESPACE) get messengerapp $(1) -o jsonpath='{.status.acknowledged.messenger\.dev/promote}'); \
	  if [ "$$phase" = Paused ] && [ "$$asked" = "$$done_" ]; then $(ROLLOUT) promote $(1) -n $(K8S_APP_NAMESPACE); fi; \
	  if [ $$(date +%s) -gt $$deadline ]; then echo "k8s: $(1) did not finish"; exit 1; fi; \
	done
	$(ROLLOUT) status $(1) -n $(K8S_APP_NAMESPACE)
endef

k8s-blue-green: ## the blue-green sample app at K8S_VERSION
	$(call apply_sample,$(K8S_BG_SAMPLE),$(K8S_BG_APP))

k8s-apply-green: ## blue-green: roll K8S_NEW_VERSION into the other slot and switch to it
	$(call roll_to,$(K8S_BG_APP),$(K8S_NEW_VERSION))

k8s-apply-blue: ## blue-green: roll K8S_VERSION back in and switch to it
	$(call roll_to,$(K8S_BG_APP),$(K8S_VERSION))

k8s-canary: ## the canary sample app at K8S_VERSION
	$(call apply_sample,$(K8S_CANARY_SAMPLE),$(K8S_CANARY_APP))

k8s-canary-migrate: ## canary: to K8S_NEW_VERSION step by step (promotes each pause)
	$(call roll_to,$(K8S_CANARY_APP),$(K8S_NEW_VERSION))

k8s-canary-apply: ## canary: promote fully now
	$(ROLLOUT) promote --full $(K8S_CANARY_APP) -n $(K8S_APP_NAMESPACE)

k8s-canary-rollback: ## canary: abort (all traffic back at once) and set the version back
	$(ROLLOUT) abort $(K8S_CANARY_APP) -n $(K8S_APP_NAMESPACE)
	$(ROLLOUT) set-version $(K8S_CANARY_APP) $(K8S_VERSION) -n $(K8S_APP_NAMESPACE)
	$(KUBECTL) -n $(K8S_APP_NAMESPACE) wait messengerapp/$(K8S_CANARY_APP) \
	  --for=jsonpath='{.status.phase}'=Healthy --timeout=$(K8S_WAIT_TIMEOUT)
	$(ROLLOUT) status $(K8S_CANARY_APP) -n $(K8S_APP_NAMESPACE)
