# Debian's Prometheus with the platform's rules, for the whole-stack Docker tests (the
# cluster runs its own Prometheus). Build context: made by `python -m stack.docker`, with
# the prometheus .deb and the dependencies the base lacks in var/docker/debs/.
ARG BASE_IMAGE=qwen3-vl-platform/base:bookworm
FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="qwen3-vl-platform prometheus (tests)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY var/docker/debs /tmp/debs
RUN dpkg -i /tmp/debs/*.deb && rm -rf /tmp/debs \
 && mkdir -p /prometheus && chown prometheus:prometheus /prometheus
COPY monitoring/prometheus/rules /etc/prometheus/rules
USER prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", \
     "--web.listen-address=0.0.0.0:9090"]
