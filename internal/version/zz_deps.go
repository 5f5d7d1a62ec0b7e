package version
import (
 _ "google.golang.org/grpc"
 _ "google.golang.org/protobuf/proto"
 _ "github.com/nxadm/tail"
 _ "go.opentelemetry.io/otel/sdk/log"
 _ "go.opentelemetry.io/otel/log"
 _ "go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploggrpc"
 _ "go.etcd.io/bbolt"
 _ "github.com/prometheus/client_golang/prometheus"
 _ "go.yaml.in/yaml/v3"
 _ "go.uber.org/goleak"
 _ "github.com/google/go-cmp/cmp"
 _ "github.com/fsnotify/fsnotify"
 _ "golang.org/x/sync/errgroup"
 _ "golang.org/x/time/rate"
)
