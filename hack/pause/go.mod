module slm-operator.dev/hack/pause

go 1.22
