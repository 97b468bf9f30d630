//! The apply layer against a scripted API server: what goes on the wire for a
//! server-side apply and an orphan deletion, and how answers are interpreted.

mod relaypool_support;

use http::Method;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::ObjectMeta;
use relaypool_support::mock_client;
use serde_json::json;
use smtpfleet_operator::relaypool::apply::{FIELD_MANAGER, delete_child, server_side_apply};

fn config_map() -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some("pool-config".into()),
            namespace: Some("mail".into()),
            ..ObjectMeta::default()
        },
        data: Some([("k".to_owned(), "v".to_owned())].into()),
        ..ConfigMap::default()
    }
}

#[tokio::test]
async fn apply_is_a_forced_server_side_apply_and_reports_creation() {
    let (client, mut server) = mock_client();
    let apply = tokio::spawn({
        let client = client.clone();
        async move { server_side_apply(&client, "mail", &config_map()).await }
    });
    let exchange = server
        .expect(
            Method::PATCH,
            "/api/v1/namespaces/mail/configmaps/pool-config",
        )
        .await;
    exchange.assert_server_side_apply(FIELD_MANAGER);
    assert_eq!(exchange.body["apiVersion"], "v1");
    assert_eq!(exchange.body["kind"], "ConfigMap");
    assert_eq!(exchange.body["data"], json!({"k": "v"}));
    exchange.answer_apply(true, None);
    let applied = apply.await.unwrap().unwrap();
    assert!(applied.created);
    assert_eq!(
        applied.object.metadata.uid.as_deref(),
        Some("uid-pool-config")
    );

    let apply = tokio::spawn({
        let client = client.clone();
        async move { server_side_apply(&client, "mail", &config_map()).await }
    });
    server
        .expect(
            Method::PATCH,
            "/api/v1/namespaces/mail/configmaps/pool-config",
        )
        .await
        .answer_apply(false, None);
    assert!(!apply.await.unwrap().unwrap().created);
}

#[tokio::test]
async fn apply_errors_carry_the_api_status() {
    let (client, mut server) = mock_client();
    let apply =
        tokio::spawn(async move { server_side_apply(&client, "mail", &config_map()).await });
    server
        .expect(
            Method::PATCH,
            "/api/v1/namespaces/mail/configmaps/pool-config",
        )
        .await
        .fail(409, "Conflict");
    match apply.await.unwrap() {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409),
        other => panic!("expected a 409, got {other:?}"),
    }
}

#[tokio::test]
async fn delete_is_conditional_on_uid_and_tolerates_not_found() {
    let (client, mut server) = mock_client();
    let api: Api<ConfigMap> = Api::namespaced(client, "mail");
    let delete = tokio::spawn({
        let api = api.clone();
        async move { delete_child(&api, "pool-config", Some("u-1".into())).await }
    });
    let exchange = server
        .expect(
            Method::DELETE,
            "/api/v1/namespaces/mail/configmaps/pool-config",
        )
        .await;
    assert_eq!(exchange.body["preconditions"]["uid"], "u-1");
    assert_eq!(exchange.body["propagationPolicy"], "Background");
    exchange.ok(&serde_json::to_value(config_map()).unwrap());
    assert!(delete.await.unwrap().unwrap());

    let delete = tokio::spawn(async move { delete_child(&api, "pool-config", None).await });
    server
        .expect(
            Method::DELETE,
            "/api/v1/namespaces/mail/configmaps/pool-config",
        )
        .await
        .not_found();
    assert!(!delete.await.unwrap().unwrap());
}
