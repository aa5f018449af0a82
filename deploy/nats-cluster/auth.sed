s/"<gateway-password>"/$TOKENRELAY_NATS_GATEWAY_PASSWORD/
s/"<runner-password>"/$TOKENRELAY_NATS_RUNNER_PASSWORD/
s/"<streamer-password>"/$TOKENRELAY_NATS_STREAMER_PASSWORD/
s/"<feedback-password>"/$TOKENRELAY_NATS_FEEDBACK_PASSWORD/
