"""WSDL 1.1 of the single SCAS operation, for zeep and other generic SOAP clients.

Document/literal over SOAP 1.1, the portType/operation/binding names and soapAction of the
Globus/privilege-xacml WSDL. The message bodies are declared loosely (the query's attributes
plus `xsd:any` children, the response as `xsd:any`): the XACML context schema is large and
the authoritative checking is done by `parse_request`, not by the schema.
"""

from __future__ import annotations

import copy
from html import escape
from typing import Any

from lxml import etree

from client import xacml_ids as ids
from client.xacml_request import envelope, serialize

_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<wsdl:definitions name="XACMLAuthorization"
    targetNamespace="{tns}"
    xmlns:tns="{tns}"
    xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/"
    xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
    xmlns:xsd="http://www.w3.org/2001/XMLSchema"
    xmlns:xacml-samlp="{query_ns}"
    xmlns:samlp="{samlp}">
  <wsdl:types>
    <xsd:schema targetNamespace="{query_ns}" elementFormDefault="qualified">
      <xsd:element name="XACMLAuthzDecisionQuery">
        <xsd:complexType>
          <xsd:sequence>
            <xsd:any namespace="##other" processContents="skip" minOccurs="0"
                     maxOccurs="unbounded"/>
          </xsd:sequence>
          <xsd:attribute name="ID" type="xsd:ID" use="required"/>
          <xsd:attribute name="Version" type="xsd:string" use="required"/>
          <xsd:attribute name="IssueInstant" type="xsd:dateTime" use="required"/>
          <xsd:attribute name="Destination" type="xsd:anyURI" use="optional"/>
          <xsd:attribute name="Consent" type="xsd:anyURI" use="optional"/>
          <xsd:attribute name="InputContextOnly" type="xsd:boolean" use="optional"/>
          <xsd:attribute name="ReturnContext" type="xsd:boolean" use="optional"/>
          <xsd:attribute name="CombinePolicies" type="xsd:boolean" use="optional"/>
        </xsd:complexType>
      </xsd:element>
    </xsd:schema>
    <xsd:schema targetNamespace="{samlp}" elementFormDefault="qualified">
      <xsd:element name="Response">
        <xsd:complexType>
          <xsd:sequence>
            <xsd:any namespace="##any" processContents="skip" minOccurs="0"
                     maxOccurs="unbounded"/>
          </xsd:sequence>
          <xsd:anyAttribute processContents="skip"/>
        </xsd:complexType>
      </xsd:element>
    </xsd:schema>
  </wsdl:types>
  <wsdl:message name="AuthorizeRequest">
    <wsdl:part name="parameters" element="xacml-samlp:XACMLAuthzDecisionQuery"/>
  </wsdl:message>
  <wsdl:message name="AuthorizeResponse">
    <wsdl:part name="parameters" element="samlp:Response"/>
  </wsdl:message>
  <wsdl:portType name="XACMLAuthorizationPortType">
    <wsdl:operation name="Authorize">
      <wsdl:input message="tns:AuthorizeRequest"/>
      <wsdl:output message="tns:AuthorizeResponse"/>
    </wsdl:operation>
  </wsdl:portType>
  <wsdl:binding name="XACMLAuthorizationPortTypeSOAPBinding" type="tns:XACMLAuthorizationPortType">
    <soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
    <wsdl:operation name="Authorize">
      <soap:operation soapAction="{action}"/>
      <wsdl:input><soap:body use="literal"/></wsdl:input>
      <wsdl:output><soap:body use="literal"/></wsdl:output>
    </wsdl:operation>
  </wsdl:binding>
  <wsdl:service name="XACMLAuthorizationService">
    <wsdl:port name="XACMLAuthorizationPort" binding="tns:XACMLAuthorizationPortTypeSOAPBinding">
      <soap:address location={location}/>
    </wsdl:port>
  </wsdl:service>
</wsdl:definitions>
"""


def wsdl(location: str) -> bytes:
    """The WSDL document with the service address `location` (e.g. https://host:8443/)."""
    if any(ch in location for ch in "\r\n\x00"):
        raise ValueError("location must be one line")
    return _TEMPLATE.format(
        tns=ids.NS_WSDL_TARGET,
        query_ns=ids.NS_XACML_SAMLP_V2,
        samlp=ids.NS_SAMLP,
        action=ids.SOAP_ACTION,
        location='"' + escape(location, quote=True) + '"',
    ).encode("utf-8")


def zeep_arguments(body: bytes) -> dict[str, Any]:
    """Keyword arguments for zeep's `client.service.Authorize(**kwargs)` from a built request.

    zeep models the loose WSDL as query attributes plus `_value_1` (the child elements), so a
    body made by `build_request` can be sent through zeep unchanged in content.
    """
    root = etree.fromstring(body)
    query = next(root.iter(f"{{{ids.NS_XACML_SAMLP_V2}}}XACMLAuthzDecisionQuery"), None)
    if query is None:
        raise ValueError("body holds no v2 XACMLAuthzDecisionQuery")
    kwargs: dict[str, Any] = {str(k): str(v) for k, v in query.attrib.items()}
    for flag in ("ReturnContext", "InputContextOnly", "CombinePolicies"):
        if flag in kwargs:
            kwargs[flag] = kwargs[flag] in ("true", "1")
    kwargs["_value_1"] = [copy.deepcopy(child) for child in query]
    return kwargs


def zeep_result_xml(result: Any) -> bytes:
    """Re-wrap what zeep returns for Authorize (`_attr_1` + `_value_1`) as a SOAP body,
    so `parse_response` can read it."""
    env, soap_body = envelope(False)
    response = etree.SubElement(soap_body, f"{{{ids.NS_SAMLP}}}Response")
    for name, value in (getattr(result, "_attr_1", None) or {}).items():
        response.set(name, str(value))
    for child in getattr(result, "_value_1", None) or []:
        response.append(copy.deepcopy(child))
    return serialize(env)
