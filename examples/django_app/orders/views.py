from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from orders.services import place_order


@csrf_exempt  # an API endpoint of the example; a real shop authenticates it
@require_POST
def place_order_view(request: HttpRequest) -> JsonResponse:
    order = place_order(
        email=request.POST["email"],
        sku=request.POST["sku"],
        amount_cents=int(request.POST["amount_cents"]),
    )
    return JsonResponse({"order": order.pk}, status=201)
